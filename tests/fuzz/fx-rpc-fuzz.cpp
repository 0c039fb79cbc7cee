// libFuzzer target: the RPC entry of the FX service ("payments.fx"): `quote` and `convert` with
// parameters decoded from fuzzer bytes (see rpc-fuzz.h). Rates span currencies of exponents 0 to
// 3 and a near-limit rate; quotes live 3 s on the test host's manual clock (each call moves it on
// a few seconds), and at most 64 are kept, so expiry, forgetting and the OVERLOADED path are all
// reachable.
//
// With PAYHOST_FUZZ_WRITE_SEEDS=DIR set, it writes valid calls to DIR and exits (that is how
// tests/fuzz/corpus/fx-rpc was made: scripts/fuzz.sh --seeds).
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <cstdlib>

#include "rpc-fuzz.h"

namespace {

using payhost::schema::Fx;

constexpr kj::StringPtr CONFIG = R"(
quote_ttl_s = 3
max_quotes = 64
[rates]
EUR_USD = "1.0842"
USD_EUR = "0.9223"
USD_JPY = "150.25"
JPY_USD = "0.006655"
USD_KWD = "0.30705"
KWD_USD = "3.2568"
USD_CLF = "0.000000000000001"
CLF_USD = "999999999999999"
)"_kj;

struct Target {
  payhost::testing::TestHost host{*payhostPluginDescriptor(), CONFIG};
  capnp::Capability::Client fx = host.serviceCapability("payments.fx");
};

void writeSeeds(const char* dir) {
  {
    capnp::MallocMessageBuilder message;
    auto params = message.initRoot<Fx::QuoteParams>();
    params.initSource().setMinorUnits(1250);
    params.getSource().setCurrency("EUR");
    params.setTargetCurrency("USD");
    payhost::fuzz::writeSeed(dir, 0, message, "quote-eur-usd");
  }
  {
    capnp::MallocMessageBuilder message;
    auto params = message.initRoot<Fx::QuoteParams>();
    params.initSource().setMinorUnits(INT64_MAX);
    params.getSource().setCurrency("CLF");
    params.setTargetCurrency("USD");
    payhost::fuzz::writeSeed(dir, 0, message, "quote-overflow");
  }
  {
    capnp::MallocMessageBuilder message;
    auto params = message.initRoot<Fx::ConvertParams>();
    params.setQuoteId("fxq_0_1");
    params.initAmount().setMinorUnits(1000);
    params.getAmount().setCurrency("EUR");
    payhost::fuzz::writeSeed(dir, 1, message, "convert");
  }
  {
    capnp::MallocMessageBuilder message;
    message.initRoot<Fx::ConvertParams>().setQuoteId("fxq_0_2");
    payhost::fuzz::writeSeed(dir, 1, message, "convert-quoted-amount");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  payhost::fuzz::writeSeedsIfAsked(writeSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Quotes carried from call to call are fuzzed too.
  auto target = &payhost::fuzz::recycled<Target>();
  payhost::fuzz::callOnce(target->host, target->fx, capnp::typeId<Fx>(), 2, data, size);
  return 0;
}
