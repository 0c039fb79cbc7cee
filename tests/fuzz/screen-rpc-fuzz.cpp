// libFuzzer target: the RPC entry of the limit-screen service ("payments.screen", the example
// out-of-tree plugin the demo loads): FraudScreen's one method with parameters decoded from
// fuzzer bytes (see rpc-fuzz.h).
//
// With PAYHOST_FUZZ_WRITE_SEEDS=DIR set, it writes a valid call to DIR and exits (that is how
// tests/fuzz/corpus/screen-rpc was made).
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <cstdlib>

#include "rpc-fuzz.h"

namespace {

using payhost::schema::FraudScreen;

struct Target {
  payhost::testing::TestHost host{*payhostPluginDescriptor(), "max_amount = 500000"};
  capnp::Capability::Client screen = host.serviceCapability("payments.screen");
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = getenv("PAYHOST_FUZZ_WRITE_SEEDS")) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<FraudScreen::ScreenParams>().initRequest();
    request.setMerchantId("m_1");
    request.initAmount().setMinorUnits(1250);
    request.getAmount().setCurrency("EUR");
    request.setCardToken("tok_visa_approve");
    request.setCardCountry("DE");
    request.setIpCountry("BR");
    payhost::fuzz::writeSeed(dir, 0, message);
    exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto target = &payhost::fuzz::recycled<Target>();
  payhost::fuzz::callOnce(target->host, target->screen, capnp::typeId<FraudScreen>(), 1, data,
                          size);
  return 0;
}
