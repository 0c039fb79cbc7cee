// libFuzzer target: the RPC entry of the payment flow ("payments.payments"), the real payments.so
// in payhostd's call path (see host-fuzz.h) with the real services it calls behind it, each its
// own .so: card-processor, fraud-screen, fx and ledger, over SQLite files. The input's first byte
// picks one of Payments' six methods, the rest is its parameters; the caller is a client
// connection's ("fuzz").
//
// With PAYHOST_FUZZ_WRITE_SEEDS=DIR set, it writes valid calls to DIR and exits (that is how
// tests/fuzz/corpus/payments-rpc was made: scripts/fuzz.sh --seeds). The capture, void, refund
// and sync seeds name the payments the authorize and purchase seeds create (a payment's id
// follows from its idempotency key).
#include <payhost/flow.capnp.h>

#include <cstdlib>

#include "host-fuzz.h"
#include "rpc-fuzz.h"

namespace {

using payhost::schema::Payments;

// The host this target runs against (HostHarness only reads these while it is made).
payhost::fuzz::HostHarness* makeHost() {
  const kj::StringPtr LEDGER_DB[] = {"ledger"};
  const kj::StringPtr PAYMENTS_DB[] = {"payments"};
  const kj::StringPtr DATABASES[] = {"ledger", "payments"};
  const payhost::fuzz::PluginSpec PLUGINS[] = {
      {"card-processor/card-processor.so", "latency_ms = 0", nullptr},
      {"fraud-screen/fraud-screen.so",
       "[velocity]\ncard_limit = 20\n[amount_limits]\nEUR = 5000000\n", nullptr},
      {"fx/fx.so", "[rates]\nEUR_USD = \"1.0842\"\nUSD_EUR = \"0.9223\"\nUSD_JPY = \"150.25\"\n",
       nullptr},
      {"ledger/ledger.so", "database = \"ledger\"\nexpiry_sweep_ms = 100", LEDGER_DB},
      {"payments/payments.so", "database = \"payments\"\nauth_window_s = 60", PAYMENTS_DB},
  };
  return new payhost::fuzz::HostHarness(PLUGINS, DATABASES);
}

// plugins/payments derives a payment's id from its first idempotency key (FNV-1a, two seeds).
kj::String paymentIdFor(kj::StringPtr key) {
  auto fnv = [&](uint64_t h) {
    for (char c : key) {
      h ^= static_cast<unsigned char>(c);
      h *= 1099511628211ull;
    }
    return h;
  };
  return kj::str("pay_", kj::hex(fnv(14695981039346656037ull)),
                 kj::hex(fnv(1469598103934665603ull)));
}

void request(const char* dir, int method, kj::StringPtr name, kj::StringPtr key,
             kj::StringPtr settlement = nullptr) {
  capnp::MallocMessageBuilder message;
  // AuthorizeParams and PurchaseParams are the same shape: one PaymentRequest.
  auto body = message.initRoot<Payments::AuthorizeParams>().initRequest();
  body.setMerchantId("m_1");
  body.initAmount().setMinorUnits(10000);
  body.getAmount().setCurrency("EUR");
  body.setCardToken("tok_visa_approve");
  body.setIdempotencyKey(key);
  if (settlement != nullptr) body.setSettlementCurrency(settlement);
  body.setCardCountry("DE");
  body.setIpCountry("DE");
  payhost::fuzz::writeSeed(dir, method, message, name);
}

void operation(const char* dir, int method, kj::StringPtr name, kj::StringPtr paymentKey,
               int64_t amount, kj::StringPtr key) {
  capnp::MallocMessageBuilder message;
  auto body = message.initRoot<Payments::CaptureParams>().initRequest();
  body.setPaymentId(paymentIdFor(paymentKey));
  body.initAmount().setMinorUnits(amount);
  body.getAmount().setCurrency("EUR");
  body.setIdempotencyKey(key);
  payhost::fuzz::writeSeed(dir, method, message, name);
}

void writeSeeds(const char* dir) {
  request(dir, 0, "authorize", "a1");
  request(dir, 0, "authorize-settle-usd", "a2", "USD");
  operation(dir, 1, "capture-part", "a1", 4000, "c1");
  operation(dir, 1, "capture-rest", "a1", 6000, "c2");
  operation(dir, 2, "void", "a2", 0, "v1");
  operation(dir, 3, "refund", "a1", 2500, "r1");
  request(dir, 4, "purchase", "p1");
  operation(dir, 3, "refund-purchase", "p1", 10000, "r2");
  capnp::MallocMessageBuilder message;
  message.initRoot<Payments::SyncParams>().setPaymentId(paymentIdFor("a1"));
  payhost::fuzz::writeSeed(dir, 5, message, "sync");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  payhost::fuzz::writeSeedsIfAsked(writeSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // One host for the whole run: payments, claims and ledger rows stay from input to input.
  auto* host = &payhost::fuzz::sharedHost(makeHost);
  if (size < 1) return 0;
  host->callMethod("payments.payments", capnp::typeId<Payments>(), data[0] % 6, data + 1, size - 1);
  return 0;
}
