// The ledger plugin in a real payhostd over a SQLite file: transfers from a client that records
// every acknowledged one while the test `kill -9`s payhostd at random moments and restarts it.
// Afterwards every acknowledged transfer is present exactly once, a retry of any of them returns
// the original result (replayed), and the balances equal a replay of the transfer log. The seed
// is printed; LEDGER_KILL_SEED replays it and LEDGER_KILL_ROUNDS=N soaks (default 3 kills).
#include <payhost/payments.capnp.h>

#include <gtest/gtest.h>

#include <signal.h>

#include <cstdlib>
#include <random>
#include <set>
#include <string>

#include "daemon-process.h"

namespace payhost::test {
namespace {

constexpr int64_t AMOUNT = 7;
constexpr int IN_FLIGHT = 32;

class LedgerDurability : public EndToEnd {
protected:
  kj::Own<DaemonProcess> start() {
    DaemonOptions options;
    options.shards = 2;
    options.dataDir = kj::heapString(data.path());
    options.extra =
        kj::str("[workers]\nmin_threads = 2\nmax_threads = 4\n", databaseTable("ledger", 4));
    options.plugins = pluginTable(LEDGER_PLUGIN, "\"ledger\"", "expiry_sweep_ms = 0");
    return kj::heap<DaemonProcess>(kj::mv(options));
  }

  static schema::Ledger::Client ledger(Connection<schema::Gateway>& connection) {
    return gatewayService<schema::Ledger>(connection, "payments.ledger");
  }

  static kj::Promise<capnp::Response<schema::Ledger::TransferResults>> send(
      schema::Ledger::Client& ledger, kj::StringPtr id) {
    auto request = ledger.transferRequest();
    auto transfer = request.initRequest();
    transfer.setTransferId(id);
    transfer.setDebitAccount("customers");
    transfer.setCreditAccount("merchant");
    transfer.setKind(schema::TransferKind::POSTED);
    auto amount = transfer.initAmount();
    amount.setMinorUnits(AMOUNT);
    amount.setCurrency("EUR");
    return request.send();
  }

  TempDir data;
};

TEST_F(LedgerDurability, EveryAcknowledgedTransferSurvivesKillNineExactlyOnce) {
  uint64_t seed = envNumber("LEDGER_KILL_SEED", std::random_device{}());
  uint64_t rounds = envNumber("LEDGER_KILL_ROUNDS", 3);
  std::printf("ledger kill test: LEDGER_KILL_SEED=%llu LEDGER_KILL_ROUNDS=%llu\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(rounds));
  SCOPED_TRACE(testing::Message() << "LEDGER_KILL_SEED=" << seed);
  std::mt19937_64 random(seed);

  {
    auto daemon = start();
    Connection<schema::Gateway> connection(io, daemon->tcpAddress());
    auto client = ledger(connection);
    for (auto [id, limited] : {std::pair{"customers", false}, std::pair{"merchant", true}}) {
      auto request = client.createAccountRequest();
      request.initRequest().setAccountId(id);
      request.getRequest().setCurrency("EUR");
      request.getRequest().initFlags().setDebitsMustNotExceedCredits(limited);
      auto response = await(request.send());
      ASSERT_TRUE(response.getResult().isPosted());
    }
    daemon->signal(SIGKILL);
    daemon->waitForExit(10 * kj::SECONDS);
  }

  std::set<std::string> acknowledged;
  uint64_t attempted = 0;
  for (uint64_t round = 0; round < rounds; ++round) {
    auto daemon = start();
    Connection<schema::Gateway> connection(io, daemon->tcpAddress());
    auto client = ledger(connection);
    // Closed loop: IN_FLIGHT transfers outstanding until the kill.
    auto killAfter = (150 + random() % 600) * kj::MILLISECONDS;
    auto deadline = now() + killAfter;
    kj::Vector<kj::Promise<void>> loops;
    bool stop = false;
    struct Loop {
      static kj::Promise<void> run(schema::Ledger::Client& ledger, uint64_t& attempted,
                                   std::set<std::string>& acknowledged, bool& stop) {
        if (stop) return kj::READY_NOW;
        auto id = kj::str("t", attempted++);
        return send(ledger, id)
            .then([&ledger, &attempted, &acknowledged, &stop, id = kj::mv(id)](
                      capnp::Response<schema::Ledger::TransferResults>&& response) mutable {
              KJ_ASSERT(response.getResult().isPosted(), id);
              acknowledged.insert(id.cStr());
              return run(ledger, attempted, acknowledged, stop);
            });
      }
    };
    for (int i = 0; i < IN_FLIGHT; ++i) {
      loops.add(Loop::run(client, attempted, acknowledged, stop)
                    .catch_([](kj::Exception&&) { /* the kill cut the call */ }));
    }
    auto all = kj::joinPromises(loops.releaseAsArray());
    io.provider->getTimer().atTime(deadline).wait(io.waitScope);
    daemon->signal(SIGKILL);
    stop = true;
    await(kj::mv(all));
    EXPECT_EQ(daemon->waitForExit(10 * kj::SECONDS), 128 + SIGKILL);
  }
  EXPECT_GT(acknowledged.size(), 0u);

  // Restart: every acknowledged transfer is there once, and a retry returns its result.
  auto daemon = start();
  Connection<schema::Gateway> connection(io, daemon->tcpAddress());
  auto client = ledger(connection);
  uint64_t replayed = 0;
  for (uint64_t i = 0; i < attempted; ++i) {
    auto id = kj::str("t", i);
    auto response = await(send(client, id));
    auto result = response.getResult();
    ASSERT_TRUE(result.isPosted()) << id.cStr();
    EXPECT_EQ(result.getPosted(), id);
    bool wasAcknowledged = acknowledged.count(id.cStr()) != 0;
    if (wasAcknowledged) {
      EXPECT_TRUE(result.getReplayed()) << "acknowledged transfer " << id.cStr() << " was lost";
    }
    replayed += result.getReplayed() ? 1 : 0;
  }
  EXPECT_GE(replayed, acknowledged.size());
  // Each attempted id is now recorded exactly once: the merchant holds exactly that many.
  auto balanceRequest = client.balanceRequest();
  balanceRequest.setAccountId("merchant");
  balanceRequest.setCurrency("EUR");
  auto balance = await(balanceRequest.send());
  EXPECT_EQ(balance.getBalance().getCredits().getMinorUnits(),
            static_cast<int64_t>(attempted) * AMOUNT);
  auto auditRequest = client.auditRequest();
  auditRequest.setCurrency("EUR");
  auto audit = await(auditRequest.send());
  auto report = audit.getReport();
  EXPECT_TRUE(report.getDebitsEqualCredits());
  EXPECT_EQ(report.getTransfers(), attempted);
  for (auto line : report.getMismatches())
    ADD_FAILURE() << line.cStr();
  std::printf("ledger kill test: %llu kills, %llu attempted, %zu acknowledged, all present once\n",
              static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(attempted),
              acknowledged.size());
}

}  // namespace
}  // namespace payhost::test
