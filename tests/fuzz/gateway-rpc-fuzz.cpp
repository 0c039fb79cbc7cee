// libFuzzer target: payhostd's client entry, byte for byte. The input is what a client sends on
// its connection: Cap'n Proto RPC frames (rpc.capnp messages, each a flat array with its segment
// table). They are written into one end of a socket pair whose other end is served as a shard
// serves an accepted connection: buffered (bufferStream), read by a two-party RPC network under
// payhostd's reader limits, with a `GatewayServer` and its `ConnectionCaller` ("fuzz", see
// host-fuzz.h for its [[access]] rules) as the bootstrap. Behind the gateway are the six real
// first-party plugin .so files in the host's ShardServices, so a crafted `getService` and every
// call made on what it returns (pipelined or not) go through the route, the access check and the
// generation's membrane into real plugin code. Once no call is in flight the client hangs up;
// the connection must close and the host must not crash, leak or hang.
//
// With PAYHOST_FUZZ_WRITE_SEEDS=DIR set, it writes seed sessions to DIR and exits (that is how
// tests/fuzz/corpus/gateway-rpc was made: scripts/fuzz.sh --seeds): listServices, and for each
// service a pipelined getService and one call on its answer, refused ones included.
//
// With PAYHOST_FUZZ_LOG=1 set, the host and the plugins log everything to stderr.
#include "host/rpc/buffered-stream.h"

#include <payhost/flow.capnp.h>
#include <payhost/host.capnp.h>
#include <payhost/payments.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <capnp/rpc.capnp.h>

#include <signal.h>

#include <cstdlib>

#include "host-fuzz.h"

namespace {

namespace schema = payhost::schema;
using Frames = kj::Vector<kj::Own<capnp::MallocMessageBuilder>>;

// The host this target runs against (HostHarness only reads these while it is made).
payhost::fuzz::HostHarness* makeHost() {
  const kj::StringPtr LEDGER_DB[] = {"ledger"};
  const kj::StringPtr PAYMENTS_DB[] = {"payments"};
  const kj::StringPtr VAULT_DB[] = {"vault"};
  const kj::StringPtr DATABASES[] = {"ledger", "payments", "vault"};
  const payhost::fuzz::PluginSpec PLUGINS[] = {
      {"card-processor/card-processor.so", "latency_ms = 0", nullptr},
      {"fraud-screen/fraud-screen.so", "[velocity]\ncard_limit = 20\n", nullptr},
      {"fx/fx.so", "[rates]\nEUR_USD = \"1.0842\"\nUSD_EUR = \"0.9223\"\n", nullptr},
      {"ledger/ledger.so", "database = \"ledger\"\nexpiry_sweep_ms = 100", LEDGER_DB},
      {"payments/payments.so", "database = \"payments\"", PAYMENTS_DB},
      {"vault/vault.so", "key = \"vault\"\ndatabase = \"vault\"", VAULT_DB},
  };
  return new payhost::fuzz::HostHarness(PLUGINS, DATABASES);
}

// Reads and drops everything the server sends until it hangs up.
kj::Promise<void> discard(kj::AsyncInputStream& in, kj::Array<kj::byte> buffer) {
  auto bytes = buffer.begin();
  auto size = buffer.size();
  return in.tryRead(bytes, 1, size)
      .then([&in, buffer = kj::mv(buffer)](size_t got) mutable -> kj::Promise<void> {
        if (got == 0) return kj::READY_NOW;
        return discard(in, kj::mv(buffer));
      });
}

// One client session (the input) against a fresh connection.
void serveSession(payhost::fuzz::HostHarness& host, const uint8_t* data, size_t size) {
  auto& waitScope = host.io.waitScope;
  auto pipe = host.io.provider->newTwoWayPipe();
  auto client = kj::mv(pipe.ends[1]);
  auto server = payhost::host::bufferStream(kj::mv(pipe.ends[0]));
  capnp::TwoPartyVatNetwork network(*server, capnp::rpc::twoparty::Side::SERVER,
                                    payhost::host::clientReaderOptions());
  auto rpc = capnp::makeRpcServer(
      network, kj::heap<payhost::host::GatewayServer>(host.services, host.newCaller()));
  auto drain =
      discard(*client, kj::heapArray<kj::byte>(size_t{64} * 1024)).eagerlyEvaluate(nullptr);
  // The server may close first (a message over the limits): the write then fails, as a client's
  // would.
  (void)kj::runCatchingExceptions([&]() { client->write(data, size).wait(waitScope); });
  host.settle();
  (void)kj::runCatchingExceptions([&]() { client->shutdownWrite(); });
  network.onDisconnect()
      .exclusiveJoin(host.timer().afterDelay(8 * kj::SECONDS).then([]() {
        KJ_FAIL_ASSERT("the connection did not close within 8 s of the client hanging up");
      }))
      .wait(waitScope);
}

// --- seeds -------------------------------------------------------------------------------------

capnp::rpc::Message::Builder frame(Frames& frames) {
  frames.add(kj::heap<capnp::MallocMessageBuilder>());
  return frames.back()->initRoot<capnp::rpc::Message>();
}

void bootstrap(Frames& frames, uint32_t question) {
  frame(frames).initBootstrap().setQuestionId(question);
}

// A call on the answer to `target` (its capability field 0 when `field`, as getService's result).
capnp::AnyPointer::Builder call(Frames& frames, uint32_t question, uint32_t target, bool field,
                                uint64_t interfaceId, uint16_t methodId) {
  auto call = frame(frames).initCall();
  call.setQuestionId(question);
  auto promised = call.initTarget().initPromisedAnswer();
  promised.setQuestionId(target);
  if (field) promised.initTransform(1)[0].setGetPointerField(0);
  call.setInterfaceId(interfaceId);
  call.setMethodId(methodId);
  return call.initParams().getContent();
}

void finish(Frames& frames, uint32_t question) {
  frame(frames).initFinish().setQuestionId(question);
}

// bootstrap, getService(service) pipelined, one call made by `fill` on its answer, finishes.
template <typename Fill>
void session(const char* dir, kj::StringPtr name, kj::StringPtr service, uint64_t interfaceId,
             uint16_t methodId, Fill&& fill) {
  Frames frames;
  bootstrap(frames, 0);
  call(frames, 1, 0, false, capnp::typeId<schema::Gateway>(), 1)
      .initAs<schema::Gateway::GetServiceParams>()
      .setName(service);
  fill(call(frames, 2, 1, true, interfaceId, methodId));
  // No Finish for the call: a Finish before its Return cancels it (the route allows
  // cancellation), and the seed should reach the plugin. The fuzzer adds Finishes by itself.
  payhost::fuzz::writeFrames(dir, name, frames);
}

void money(schema::Money::Builder money, int64_t amount, kj::StringPtr currency) {
  money.setMinorUnits(amount);
  money.setCurrency(currency);
}

void writeSeeds(const char* dir) {
  {
    Frames frames;
    bootstrap(frames, 0);
    call(frames, 1, 0, false, capnp::typeId<schema::Gateway>(), 0);
    finish(frames, 1);
    finish(frames, 0);
    payhost::fuzz::writeFrames(dir, "list-services", frames);
  }
  session(dir, "fx-quote", "payments.fx", capnp::typeId<schema::Fx>(), 0, [](auto params) {
    auto quote = params.template initAs<schema::Fx::QuoteParams>();
    money(quote.initSource(), 1250, "EUR");
    quote.setTargetCurrency("USD");
  });
  session(dir, "fraud-screen", "payments.fraud", capnp::typeId<schema::FraudScreen>(), 0,
          [](auto params) {
            auto request =
                params.template initAs<schema::FraudScreen::ScreenParams>().initRequest();
            request.setMerchantId("m_1");
            money(request.initAmount(), 1250, "EUR");
            request.setCardToken("tok_visa_approve");
          });
  session(dir, "card-authorize", "payments.card", capnp::typeId<schema::CardProcessor>(), 0,
          [](auto params) {
            auto request =
                params.template initAs<schema::CardProcessor::AuthorizeParams>().initRequest();
            request.setMerchantId("m_1");
            money(request.initAmount(), 1250, "EUR");
            request.setCardToken("tok_visa_approve");
            request.setIdempotencyKey("k1");
          });
  session(dir, "vault-tokenize", "payments.vault", capnp::typeId<schema::Vault>(), 0,
          [](auto params) {
            auto request = params.template initAs<schema::Vault::TokenizeParams>().initRequest();
            request.setPan("4111111111111111");
            request.setExpiryMonth(12);
            request.setExpiryYear(2030);
          });
  // Refused: the caller has no rule for the reveal service, nor for ledger transfers.
  session(dir, "vault-reveal-refused", "payments.vault.reveal",
          capnp::typeId<schema::VaultReveal>(), 0, [](auto params) {
            auto reveal = params.template initAs<schema::VaultReveal::RevealParams>();
            reveal.setToken("tok_abcdefghijklmnopqrstuvwx");
            reveal.setPurpose("fuzz");
          });
  session(dir, "ledger-balance", "payments.ledger", capnp::typeId<schema::Ledger>(), 1,
          [](auto params) {
            auto balance = params.template initAs<schema::Ledger::BalanceParams>();
            balance.setAccountId("cards");
            balance.setCurrency("EUR");
          });
  session(dir, "ledger-transfer-refused", "payments.ledger", capnp::typeId<schema::Ledger>(), 0,
          [](auto params) {
            auto request = params.template initAs<schema::Ledger::TransferParams>().initRequest();
            request.setTransferId("t1");
            request.setDebitAccount("cards");
            request.setCreditAccount("merchant:m_1");
            money(request.initAmount(), 1, "EUR");
            request.setKind(schema::TransferKind::POSTED);
          });
  session(dir, "payments-purchase", "payments.payments", capnp::typeId<schema::Payments>(), 4,
          [](auto params) {
            auto request = params.template initAs<schema::Payments::PurchaseParams>().initRequest();
            request.setMerchantId("m_1");
            money(request.initAmount(), 1250, "EUR");
            request.setCardToken("tok_visa_approve");
            request.setIdempotencyKey("p1");
          });
  session(dir, "unknown-service", "payments.nope", capnp::typeId<schema::Fx>(), 0,
          [](auto params) { params.template initAs<schema::Fx::QuoteParams>(); });
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = getenv("PAYHOST_FUZZ_WRITE_SEEDS")) {
    writeSeeds(dir);
    exit(0);
  }
  // As payhostd: a peer that hung up fails the write instead of killing the process.
  signal(SIGPIPE, SIG_IGN);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // One host for the whole run (as one payhostd serves many connections); one connection per
  // input.
  auto* host = &payhost::fuzz::sharedHost(makeHost);
  serveSession(*host, data, size);
  return 0;
}
