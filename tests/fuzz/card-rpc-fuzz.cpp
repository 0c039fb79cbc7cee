// libFuzzer target: the RPC entry of the card-processor service ("payments.card"). The input's
// first byte picks the method (CardProcessor has six); the rest is read as a Cap'n Proto message
// (flat array with its segment table) under reader limits, and its root becomes that call's
// parameters, sent to the plugin's server through the SDK's test host as any caller's would be.
// A malformed message or a call the plugin refuses ends in a kj::Exception; anything else is a
// finding.
//
// With PAYHOST_FUZZ_WRITE_SEEDS=DIR set, it writes one valid call per method to DIR and exits
// (that is how tests/fuzz/corpus/card-rpc was made).
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <cstdlib>

#include "rpc-fuzz.h"

namespace {

using payhost::fuzz::writeSeed;
using payhost::schema::CardProcessor;

struct Target {
  payhost::testing::TestHost host{*payhostPluginDescriptor(), "latency_ms = 0"};
  capnp::Capability::Client card = host.serviceCapability("payments.card");
};

void writeSeeds(const char* dir) {
  {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<CardProcessor::AuthorizeParams>().initRequest();
    request.setMerchantId("m_1");
    request.initAmount().setMinorUnits(1250);
    request.getAmount().setCurrency("EUR");
    request.setCardToken("tok_visa_approve");
    request.setIdempotencyKey("k1");
    writeSeed(dir, 0, message);
  }
  {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<CardProcessor::CaptureParams>().initRequest();
    request.setTransactionId("txn_1");
    request.initAmount().setMinorUnits(1250);
    request.getAmount().setCurrency("EUR");
    request.setIdempotencyKey("k2");
    writeSeed(dir, 1, message);
  }
  {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<CardProcessor::VoidAuthorizationParams>().initRequest();
    request.setTransactionId("txn_1");
    request.setIdempotencyKey("k3");
    writeSeed(dir, 2, message);
  }
  {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<CardProcessor::RefundParams>().initRequest();
    request.setTransactionId("txn_1");
    request.initAmount().setMinorUnits(100);
    request.getAmount().setCurrency("EUR");
    request.setIdempotencyKey("k4");
    writeSeed(dir, 3, message);
  }
  {
    capnp::MallocMessageBuilder message;
    message.initRoot<CardProcessor::SyncParams>().setTransactionId("txn_1");
    writeSeed(dir, 4, message);
  }
  {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<CardProcessor::PurchaseParams>().initRequest();
    request.setMerchantId("m_1");
    request.initAmount().setMinorUnits(990);
    request.getAmount().setCurrency("JPY");
    request.setCardToken("tok_visa_approve");
    request.setIdempotencyKey("k5");
    writeSeed(dir, 5, message);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  payhost::fuzz::writeSeedsIfAsked(writeSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // State carried from call to call (authorizations, idempotency keys) is fuzzed too.
  auto target = &payhost::fuzz::recycled<Target>();
  payhost::fuzz::callOnce(target->host, target->card, capnp::typeId<CardProcessor>(), 6, data,
                          size);
  return 0;
}
