// libFuzzer target: the RPC entry of the ledger service ("payments.ledger"), the real ledger.so in
// payhostd's call path over a real SQLite file (see host-fuzz.h). The input's first byte picks one
// of Ledger's seven methods, the rest is its parameters. The caller is trusted host code (a
// route with no connection caller), so every method is reachable; the [[access]] refusals are
// the gateway target's.
//
// With PAYHOST_FUZZ_WRITE_SEEDS=DIR set, it writes valid calls to DIR and exits (that is how
// tests/fuzz/corpus/ledger-rpc was made: scripts/fuzz.sh --seeds).
#include <payhost/payments.capnp.h>

#include <cstdlib>

#include "host-fuzz.h"
#include "rpc-fuzz.h"

namespace {

using payhost::schema::Ledger;
using payhost::schema::TransferKind;

// The host this target runs against (HostHarness only reads these while it is made).
payhost::fuzz::HostHarness* makeHost() {
  const kj::StringPtr DATABASES[] = {"ledger"};
  const payhost::fuzz::PluginSpec PLUGINS[] = {
      {"ledger/ledger.so", "database = \"ledger\"\nexpiry_sweep_ms = 50\nmax_batch = 8",
       DATABASES}};
  return new payhost::fuzz::HostHarness(PLUGINS, DATABASES);
}

void transfer(Ledger::TransferParams::Builder params, kj::StringPtr id, TransferKind kind,
              int64_t amount, kj::StringPtr pendingId = nullptr, int64_t timeoutMs = 0) {
  auto request = params.initRequest();
  request.setTransferId(id);
  request.setDebitAccount("cards");
  request.setCreditAccount("merchant:m_1");
  request.initAmount().setMinorUnits(amount);
  request.getAmount().setCurrency("EUR");
  request.setKind(kind);
  if (pendingId != nullptr) request.setPendingId(pendingId);
  request.setTimeoutMs(timeoutMs);
}

void writeSeeds(const char* dir) {
  using payhost::fuzz::writeSeed;
  for (auto account : {"cards", "merchant:m_1"}) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<Ledger::CreateAccountParams>().initRequest();
    request.setAccountId(account);
    request.setCurrency("EUR");
    request.initFlags().setDebitsMustNotExceedCredits(kj::StringPtr(account) != "cards");
    writeSeed(dir, 2, message, kj::str("create-", account[0] == 'c' ? "cards" : "merchant"));
  }
  {
    capnp::MallocMessageBuilder message;
    transfer(message.initRoot<Ledger::TransferParams>(), "t1", TransferKind::POSTED, 1250);
    writeSeed(dir, 0, message, "transfer-posted");
  }
  {
    capnp::MallocMessageBuilder message;
    transfer(message.initRoot<Ledger::TransferParams>(), "t2", TransferKind::PENDING, 500, nullptr,
             1000);
    writeSeed(dir, 0, message, "transfer-pending");
  }
  {
    capnp::MallocMessageBuilder message;
    transfer(message.initRoot<Ledger::TransferParams>(), "t3", TransferKind::POST_PENDING, 400,
             "t2");
    writeSeed(dir, 0, message, "transfer-post-pending");
  }
  {
    capnp::MallocMessageBuilder message;
    transfer(message.initRoot<Ledger::TransferParams>(), "t4", TransferKind::VOID_PENDING, 0, "t2");
    writeSeed(dir, 0, message, "transfer-void-pending");
  }
  {
    capnp::MallocMessageBuilder message;
    auto params = message.initRoot<Ledger::BalanceParams>();
    params.setAccountId("merchant:m_1");
    params.setCurrency("EUR");
    writeSeed(dir, 1, message, "balance");
  }
  {
    capnp::MallocMessageBuilder message;
    auto requests = message.initRoot<Ledger::TransferAllParams>().initRequests(2);
    for (uint32_t i = 0; i < 2; ++i) {
      requests[i].setTransferId(kj::str("linked", i));
      requests[i].setDebitAccount(i == 0 ? "cards" : "merchant:m_1");
      requests[i].setCreditAccount(i == 0 ? "merchant:m_1" : "cards");
      requests[i].initAmount().setMinorUnits(INT64_MAX - i);
      requests[i].getAmount().setCurrency("EUR");
      requests[i].setKind(TransferKind::POSTED);
    }
    writeSeed(dir, 3, message, "transfer-all");
  }
  {
    capnp::MallocMessageBuilder message;
    message.initRoot<Ledger::BalancesParams>().setCurrency("EUR");
    writeSeed(dir, 4, message, "balances");
  }
  {
    capnp::MallocMessageBuilder message;
    message.initRoot<Ledger::AuditParams>().setCurrency("EUR");
    writeSeed(dir, 5, message, "audit");
  }
  {
    capnp::MallocMessageBuilder message;
    message.initRoot<Ledger::ExpireParams>();
    writeSeed(dir, 6, message, "expire");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  payhost::fuzz::writeSeedsIfAsked(writeSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // One host for the whole run: accounts and transfers from earlier inputs stay in the database.
  auto* host = &payhost::fuzz::sharedHost(makeHost);
  if (size < 1) return 0;
  host->callMethod("payments.ledger", capnp::typeId<Ledger>(), data[0] % 7, data + 1, size - 1,
                   /*trusted=*/true);
  return 0;
}
