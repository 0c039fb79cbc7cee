// libFuzzer target: the RPC entry of the fraud-screen service ("payments.fraud"): FraudScreen's
// one method with parameters decoded from fuzzer bytes (see rpc-fuzz.h). Small velocity limits and
// amount limits make every rule reachable; the windows slide on the test host's manual clock,
// which each call moves on by a few seconds.
//
// With PAYHOST_FUZZ_WRITE_SEEDS=DIR set, it writes valid calls to DIR and exits (that is how
// tests/fuzz/corpus/fraud-rpc was made: scripts/fuzz.sh --seeds).
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <cstdlib>

#include "rpc-fuzz.h"

namespace {

using payhost::schema::FraudScreen;

constexpr kj::StringPtr CONFIG = R"(
review_score = 300
deny_score = 700
sweep_threshold = 64
[velocity]
card_limit = 3
card_window_s = 5
merchant_limit = 20
merchant_window_s = 5
[amount_limits]
EUR = 500000
JPY = 50000000
KWD = 150000
)"_kj;

struct Target {
  payhost::testing::TestHost host{*payhostPluginDescriptor(), CONFIG};
  capnp::Capability::Client screen = host.serviceCapability("payments.fraud");
};

void writeSeed(const char* dir, int n, kj::StringPtr currency, int64_t amount,
               kj::StringPtr cardCountry, kj::StringPtr ipCountry) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<FraudScreen::ScreenParams>().initRequest();
  request.setMerchantId("m_1");
  request.initAmount().setMinorUnits(amount);
  request.getAmount().setCurrency(currency);
  request.setCardToken("tok_abcdefghijklmnopqrstuvwx");
  request.setCardCountry(cardCountry);
  request.setIpCountry(ipCountry);
  request.setMerchantCountry("DE");
  payhost::fuzz::writeSeed(dir, 0, message, kj::str("screen-", n));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = getenv("PAYHOST_FUZZ_WRITE_SEEDS")) {
    writeSeed(dir, 0, "EUR", 1250, "DE", "DE");
    writeSeed(dir, 1, "EUR", 900000, "DE", "BR");
    writeSeed(dir, 2, "KWD", 1, "", "");
    exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The velocity windows carried from call to call are fuzzed too.
  auto target = &payhost::fuzz::recycled<Target>();
  payhost::fuzz::callOnce(target->host, target->screen, capnp::typeId<FraudScreen>(), 1, data,
                          size);
  return 0;
}
