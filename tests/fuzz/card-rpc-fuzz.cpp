// libFuzzer target: the RPC entry of the card-processor service ("payments.card"). The input's
// first byte picks the method (CardProcessor has five); the rest is read as a Cap'n Proto message
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

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/debug.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

using payhost::schema::CardProcessor;

constexpr uint16_t METHODS = 5;

// Tighter than Cap'n Proto's defaults (64 Mi words, depth 64), as a host serving untrusted
// callers sets them.
// TODO(security): take these from host/rpc once it exports the host's ReaderOptions.
capnp::ReaderOptions readerOptions() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 1u << 16;
  options.nestingLimit = 32;
  return options;
}

struct Target {
  payhost::testing::TestHost host{*payhostPluginDescriptor(), "latency_ms = 0"};
  CardProcessor::Client card = host.service<CardProcessor>("payments.card");
};

void writeSeed(const char* dir, int method, capnp::MessageBuilder& message) {
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  auto path = kj::str(dir, "/method-", method);
  int fd = open(path.cStr(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  KJ_ASSERT(fd >= 0, path);
  kj::AutoCloseFd owned(fd);
  kj::byte selector = static_cast<kj::byte>(method);
  kj::FdOutputStream out(fd);
  out.write(&selector, 1);
  out.write(bytes.begin(), bytes.size());
}

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
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = getenv("PAYHOST_FUZZ_WRITE_SEEDS")) {
    writeSeeds(dir);
    exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // One plugin instance for the whole run, as a shard keeps one: state carried from call to call
  // (authorizations, idempotency keys) is part of what is fuzzed.
  static Target* target = new Target;
  if (size < 1) return 0;
  uint16_t method = data[0] % METHODS;
  // Aligned copy: a message on the wire is read into word-aligned buffers too.
  size_t words = (size - 1) / sizeof(capnp::word);
  auto buffer = kj::heapArray<capnp::word>(words);
  memcpy(buffer.begin(), data + 1, words * sizeof(capnp::word));
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 capnp::FlatArrayMessageReader reader(buffer, readerOptions());
                 auto request =
                     target->card.typelessRequest(capnp::typeId<CardProcessor>(), method, nullptr);
                 request.set(reader.getRoot<capnp::AnyPointer>());
                 auto promise = request.send();
                 auto& waitScope = target->host.waitScope();
                 // The plugin may wait on its (fake) clock; move it on a little, then give up.
                 for (int i = 0; i < 4 && !promise.poll(waitScope); ++i) {
                   target->host.advanceTime(1 * kj::SECONDS);
                 }
                 if (promise.poll(waitScope)) (void)promise.wait(waitScope);
               })) {
    (void)e;
  }
  return 0;
}
