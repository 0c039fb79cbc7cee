// The ledger's contract, run against a real SQLite file and a real PostgreSQL server this test
// starts itself, through the host's SqlPool (as the plugin sees it in payhostd), plus property
// tests over thousands of random operation sequences (seeded; the seed is printed and
// LEDGER_PROPERTY_SEED replays it; LEDGER_PROPERTY_SEQUENCES sets how many).
#include "host/config/daemon-config.h"
#include "host/log/logger.h"
#include "host/pools/sql-pool.h"
#include "host/pools/worker-pool.h"

#include <payhost/group-commit.h>

#include <kj/async-io.h>
#include <kj/vector.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <string>

#include "engine.h"
#include "tests/support/postgres-server.h"

namespace payhost::plugins::ledger {
namespace {

using payhost::host::LogFormat;
using payhost::host::LogSink;
using payhost::host::SqlPool;
using payhost::host::WorkerPool;
using payhost::testsupport::postgresServer;
using payhost::testsupport::TempDir;

constexpr int64_t MAX = std::numeric_limits<int64_t>::max();

class PoolDatabase final : public Database {
public:
  PoolDatabase(SqlPool& pool, kj::Timer& timer) : pool(pool), timer(timer) {}
  kj::StringPtr name() override { return pool.name(); }
  SqlDialect dialect() override { return pool.dialect(); }
  kj::Promise<void> transactionWork(kj::Function<void(SqlTransaction&)> work) override {
    ++transactions;
    if (conflictNext > 0) {
      --conflictNext;
      // As the host reports a transaction PostgreSQL aborted for a deadlock.
      return pool.transaction("ledger", timer, [work = kj::mv(work)](SqlTransaction& tx) mutable {
        work(tx);
        kj::throwFatalException(
            KJ_EXCEPTION(OVERLOADED, "database ledger: injected deadlock (SQLSTATE 40P01)"));
      });
    }
    if (failNext > 0) {
      --failNext;
      // Runs the work, then fails the commit: nothing of it may remain.
      return pool.transaction("ledger", timer, [work = kj::mv(work)](SqlTransaction& tx) mutable {
        work(tx);
        KJ_FAIL_REQUIRE("injected commit failure");
      });
    }
    return pool.transaction("ledger", timer, kj::mv(work));
  }

  uint64_t transactions = 0;
  int failNext = 0;
  int conflictNext = 0;

private:
  SqlPool& pool;
  kj::Timer& timer;
};

Transfer posted(kj::StringPtr id, kj::StringPtr debit, kj::StringPtr credit, int64_t amount,
                kj::StringPtr currency = "EUR") {
  return Transfer{kj::str(id), kj::str(debit), kj::str(credit), kj::str(currency),
                  amount,      Kind::POSTED,   kj::str(),       0};
}

Transfer pending(kj::StringPtr id, kj::StringPtr debit, kj::StringPtr credit, int64_t amount,
                 int64_t timeoutMs = 0, kj::StringPtr currency = "EUR") {
  return Transfer{kj::str(id), kj::str(debit), kj::str(credit), kj::str(currency),
                  amount,      Kind::PENDING,  kj::str(),       timeoutMs};
}

Transfer resolve(Kind kind, kj::StringPtr id, kj::StringPtr pendingId, int64_t amount,
                 kj::StringPtr currency = "EUR") {
  return Transfer{kj::str(id), kj::str(), kj::str(),          kj::str(currency),
                  amount,      kind,      kj::str(pendingId), 0};
}

template <typename... T>
kj::Array<Transfer> list(T&&... transfers) {
  auto builder = kj::heapArrayBuilder<Transfer>(sizeof...(T));
  (builder.add(kj::fwd<T>(transfers)), ...);
  return builder.finish();
}

Operation chain(kj::Array<Transfer> transfers, int64_t nowMs = 1000) {
  Operation operation;
  operation.transfers = kj::mv(transfers);
  operation.nowMs = nowMs;
  return operation;
}

Operation one(Transfer transfer, int64_t nowMs = 1000) {
  return chain(list(kj::mv(transfer)), nowMs);
}

Operation account(kj::StringPtr id, Flags flags = {}, kj::StringPtr currency = "EUR") {
  Operation operation;
  operation.type = Operation::Type::CREATE_ACCOUNT;
  operation.account = AccountSpec{kj::str(id), kj::str(currency), flags};
  return operation;
}

Operation expireAt(int64_t nowMs) {
  Operation operation;
  operation.type = Operation::Type::EXPIRE;
  operation.nowMs = nowMs;
  return operation;
}

class LedgerContract : public testing::TestWithParam<SqlDialect> {
protected:
  ~LedgerContract() noexcept override {}

  void SetUp() override {
    if (GetParam() == SqlDialect::POSTGRESQL) {
      auto postgres = postgresServer();
      ASSERT_TRUE(postgres != nullptr && !postgres->conninfo.empty())
          << "PostgreSQL could not be started: " << (postgres ? postgres->failure : "");
    }
    SqlPool::Options options;
    options.name = kj::str("ledger");
    options.dialect = GetParam();
    options.target = GetParam() == SqlDialect::SQLITE
                         ? kj::str((dir.path / "ledger.sqlite").c_str())
                         : kj::str(postgresServer()->conninfo.c_str());
    options.maxConnections = 4;
    options.leaseWait = 5 * kj::SECONDS;
    pool = kj::heap<SqlPool>(kj::mv(options), workers, log);
    database = kj::heap<PoolDatabase>(*pool, io.provider->getTimer());
    auto dialect = GetParam();
    database
        ->transaction([dialect](SqlTransaction& tx) {
          if (dialect == SqlDialect::POSTGRESQL) {
            tx.execute("DROP SCHEMA public CASCADE");
            tx.execute("CREATE SCHEMA public");
          }
          createSchema(tx, dialect);
        })
        .wait(io.waitScope);
  }

  Outcome apply(Operation operation) {
    auto dialect = GetParam();
    return database
        ->transaction([dialect, operation = kj::mv(operation)](SqlTransaction& tx) {
          auto outcomes = applyBatch(tx, dialect, kj::arrayPtr(&operation, 1));
          return kj::mv(outcomes[0]);
        })
        .wait(io.waitScope);
  }

  Balance balance(kj::StringPtr id, kj::StringPtr currency = "EUR") {
    return KJ_ASSERT_NONNULL(
        database
            ->transaction([id = kj::str(id), currency = kj::str(currency)](SqlTransaction& tx) {
              return loadBalance(tx, id, currency);
            })
            .wait(io.waitScope));
  }

  Audit auditOf(kj::StringPtr currency = "EUR") {
    return database
        ->transaction(
            [currency = kj::str(currency)](SqlTransaction& tx) { return audit(tx, currency); })
        .wait(io.waitScope);
  }

  void expectClean(kj::StringPtr currency = "EUR") {
    auto report = auditOf(currency);
    EXPECT_TRUE(report.debitsEqualCredits);
    for (auto& line : report.mismatches)
      ADD_FAILURE() << line.cStr();
  }

  static bool isPropertyTest() {
    auto info = testing::UnitTest::GetInstance()->current_test_info();
    return info != nullptr && std::string(info->name()).find("Random") != std::string::npos;
  }

  // applyBatch for this test's dialect, as the plugin hands it to GroupCommit.
  GroupCommit<Operation, Outcome>::BatchFunction batchFunction() {
    if (GetParam() == SqlDialect::SQLITE) {
      return +[](SqlTransaction& tx, kj::ArrayPtr<const Operation> ops) {
        return applyBatch(tx, SqlDialect::SQLITE, ops);
      };
    }
    return +[](SqlTransaction& tx, kj::ArrayPtr<const Operation> ops) {
      return applyBatch(tx, SqlDialect::POSTGRESQL, ops);
    };
  }

  // Five transfers customer -> merchant of 10 at once through `commits`; each must be applied.
  void postFive(GroupCommit<Operation, Outcome>& commits) {
    kj::Vector<kj::Promise<Outcome>> promises;
    for (int i = 0; i < 5; ++i)
      promises.add(commits.submit(one(posted(kj::str("t", i), "customer", "merchant", 10))));
    auto outcomes = kj::joinPromises(promises.releaseAsArray()).wait(io.waitScope);
    for (auto& outcome : outcomes)
      EXPECT_TRUE(outcome.ok && !outcome.replayed);
  }

  void standardAccounts() {
    ASSERT_TRUE(apply(account("customer")).ok);
    ASSERT_TRUE(apply(account("merchant", Flags{true, false})).ok);
    ASSERT_TRUE(apply(account("bank")).ok);
  }

  kj::AsyncIoContext io = kj::setupAsyncIo();
  LogSink log{LogLevel::ERROR, LogFormat::LOGFMT};
  // The property test commits tens of thousands of times: on tmpfs when there is one.
  TempDir dir = isPropertyTest() && std::filesystem::is_directory("/dev/shm")
                    ? TempDir(std::filesystem::path("/dev/shm"))
                    : TempDir();
  kj::Own<SqlPool> pool;
  kj::Own<PoolDatabase> database;
  WorkerPool workers{WorkerPool::Options{2, 8, 5 * kj::SECONDS, 1 * kj::SECONDS}, log};
};

TEST_P(LedgerContract, APostedTransferMovesDebitsToCreditsAndTheAuditAgrees) {
  standardAccounts();
  auto outcome = apply(one(posted("t1", "customer", "merchant", 1250)));
  ASSERT_TRUE(outcome.ok) << outcome.message.cStr();
  EXPECT_FALSE(outcome.replayed);
  EXPECT_EQ(outcome.id, "t1");
  auto customer = balance("customer");
  auto merchant = balance("merchant");
  EXPECT_EQ(customer.debitsPosted, 1250);
  EXPECT_EQ(customer.creditsPosted, 0);
  EXPECT_EQ(merchant.creditsPosted, 1250);
  EXPECT_EQ(merchant.debitsPosted, 0);
  auto report = auditOf();
  EXPECT_EQ(report.transfers, 1u);
  EXPECT_EQ(report.accounts, 3u);
  expectClean();
}

TEST_P(LedgerContract, TheSameIdWithTheSameFieldsReplaysAndWithOthersIsRefusedWithNoEffect) {
  standardAccounts();
  ASSERT_TRUE(apply(one(posted("t1", "customer", "merchant", 100))).ok);
  auto again = apply(one(posted("t1", "customer", "merchant", 100)));
  EXPECT_TRUE(again.ok);
  EXPECT_TRUE(again.replayed);
  auto other = apply(one(posted("t1", "customer", "merchant", 101)));
  EXPECT_FALSE(other.ok);
  EXPECT_EQ(other.code, Reject::IDEMPOTENCY_CONFLICT);
  auto swapped = apply(one(posted("t1", "bank", "merchant", 100)));
  EXPECT_EQ(swapped.code, Reject::IDEMPOTENCY_CONFLICT);
  EXPECT_EQ(balance("customer").debitsPosted, 100);
  EXPECT_EQ(balance("bank").debitsPosted, 0);
  EXPECT_EQ(auditOf().transfers, 1u);
  // Accounts are idempotent too.
  EXPECT_TRUE(apply(account("merchant", Flags{true, false})).replayed);
  EXPECT_EQ(apply(account("merchant")).code, Reject::IDEMPOTENCY_CONFLICT);
  expectClean();
}

TEST_P(LedgerContract, APendingTransferPostedInPartReleasesTheRest) {
  standardAccounts();
  ASSERT_TRUE(apply(one(pending("p1", "customer", "merchant", 1000))).ok);
  EXPECT_EQ(balance("customer").debitsPending, 1000);
  EXPECT_EQ(balance("merchant").creditsPending, 1000);
  auto tooMuch = apply(one(resolve(Kind::POST_PENDING, "c1", "p1", 1001)));
  EXPECT_EQ(tooMuch.code, Reject::EXCEEDS_LIMIT);
  auto post = apply(one(resolve(Kind::POST_PENDING, "c1", "p1", 600)));
  ASSERT_TRUE(post.ok) << post.message.cStr();
  auto customer = balance("customer");
  EXPECT_EQ(customer.debitsPending, 0);
  EXPECT_EQ(customer.debitsPosted, 600);
  EXPECT_EQ(balance("merchant").creditsPosted, 600);
  // Resolved once: neither a second post nor a void may follow.
  EXPECT_EQ(apply(one(resolve(Kind::POST_PENDING, "c2", "p1", 100))).code, Reject::INVALID_STATE);
  EXPECT_EQ(apply(one(resolve(Kind::VOID_PENDING, "v1", "p1", 0))).code, Reject::INVALID_STATE);
  EXPECT_TRUE(apply(one(resolve(Kind::POST_PENDING, "c1", "p1", 600))).replayed);
  expectClean();
}

TEST_P(LedgerContract, AVoidReleasesEverythingAndNothingCanBePostedAfter) {
  standardAccounts();
  ASSERT_TRUE(apply(one(pending("p1", "customer", "merchant", 500))).ok);
  ASSERT_TRUE(apply(one(resolve(Kind::VOID_PENDING, "v1", "p1", 0))).ok);
  EXPECT_EQ(balance("customer").debitsPending, 0);
  EXPECT_EQ(balance("merchant").creditsPending, 0);
  EXPECT_EQ(apply(one(resolve(Kind::POST_PENDING, "c1", "p1", 1))).code, Reject::INVALID_STATE);
  EXPECT_EQ(apply(one(resolve(Kind::POST_PENDING, "c1", "nope", 1))).code,
            Reject::UNKNOWN_TRANSACTION);
  EXPECT_EQ(apply(one(resolve(Kind::POST_PENDING, "c1", "v1", 1))).code,
            Reject::UNKNOWN_TRANSACTION);
  expectClean();
}

TEST_P(LedgerContract, APendingTransferExpiresByTheClock) {
  standardAccounts();
  ASSERT_TRUE(apply(one(pending("p1", "customer", "merchant", 300, 5000), 1000)).ok);
  ASSERT_TRUE(apply(one(pending("p2", "customer", "merchant", 200, 5000), 1000)).ok);
  // Before the deadline nothing expires.
  EXPECT_EQ(apply(expireAt(5999)).expired, 0u);
  // A post after the deadline is refused and records the expiry.
  auto late = apply(one(resolve(Kind::POST_PENDING, "c1", "p1", 300), 6000));
  EXPECT_EQ(late.code, Reject::INVALID_STATE);
  EXPECT_NE(std::string(late.message.cStr()).find("expired"), std::string::npos);
  EXPECT_EQ(balance("customer").debitsPending, 200);
  // The sweep expires the other.
  EXPECT_EQ(apply(expireAt(6000)).expired, 1u);
  EXPECT_EQ(apply(expireAt(7000)).expired, 0u);
  EXPECT_EQ(balance("customer").debitsPending, 0);
  EXPECT_EQ(balance("merchant").creditsPending, 0);
  EXPECT_EQ(apply(one(resolve(Kind::VOID_PENDING, "v2", "p2", 0), 7000)).code,
            Reject::INVALID_STATE);
  EXPECT_EQ(auditOf().transfers, 4u);
  expectClean();
}

TEST_P(LedgerContract, BalanceLimitsRefuseDebitsAboveCredits) {
  standardAccounts();
  ASSERT_TRUE(apply(one(posted("in", "customer", "merchant", 1000))).ok);
  // The merchant's debits may not exceed its credits, pending ones included.
  ASSERT_TRUE(apply(one(pending("hold", "merchant", "bank", 700))).ok);
  auto over = apply(one(posted("out", "merchant", "bank", 301)));
  EXPECT_EQ(over.code, Reject::EXCEEDS_LIMIT);
  EXPECT_TRUE(apply(one(posted("out", "merchant", "bank", 300))).ok);
  EXPECT_EQ(balance("bank").creditsPosted, 300);
  ASSERT_TRUE(apply(account("capped", Flags{false, true})).ok);
  EXPECT_EQ(apply(one(posted("cap", "customer", "capped", 1))).code, Reject::EXCEEDS_LIMIT);
  expectClean();
}

TEST_P(LedgerContract, LinkedTransfersApplyAllOrNone) {
  standardAccounts();
  auto good = list(posted("a", "customer", "merchant", 100), posted("b", "merchant", "bank", 100));
  ASSERT_TRUE(apply(chain(kj::mv(good))).ok);
  // The second leg breaks the merchant's limit: the first must not remain.
  auto bad = list(posted("c", "customer", "merchant", 50), posted("d", "merchant", "bank", 51));
  auto refused = apply(chain(kj::mv(bad)));
  EXPECT_FALSE(refused.ok);
  EXPECT_NE(std::string(refused.message.cStr()).find("transfer 1:"), std::string::npos)
      << refused.message.cStr();
  EXPECT_EQ(balance("customer").debitsPosted, 100);
  EXPECT_EQ(auditOf().transfers, 2u);
  expectClean();
}

TEST_P(LedgerContract, AmountsNearTheInt64LimitAreRefusedAndNeverWrap) {
  standardAccounts();
  ASSERT_TRUE(apply(one(posted("big", "customer", "bank", MAX - 10))).ok);
  auto over = apply(one(posted("over", "customer", "bank", 11)));
  EXPECT_FALSE(over.ok);
  EXPECT_EQ(over.code, Reject::INVALID_REQUEST);
  EXPECT_TRUE(apply(one(posted("fits", "customer", "bank", 10))).ok);
  EXPECT_EQ(balance("customer").debitsPosted, MAX);
  // Pending plus posted must fit too, so a post can never overflow.
  EXPECT_FALSE(apply(one(pending("p", "customer", "merchant", 1))).ok);
  EXPECT_FALSE(apply(one(posted("neg", "merchant", "bank", -5))).ok);
  EXPECT_FALSE(apply(one(posted("zero", "merchant", "bank", 0))).ok);
  EXPECT_EQ(balance("bank").creditsPosted, MAX);
  expectClean();
}

TEST_P(LedgerContract, BadShapesAreRefused) {
  standardAccounts();
  EXPECT_EQ(apply(one(posted("x", "customer", "customer", 1))).code, Reject::INVALID_REQUEST);
  EXPECT_EQ(apply(one(posted("x", "customer", "ghost", 1))).code, Reject::INVALID_REQUEST);
  EXPECT_EQ(apply(one(posted("x", "customer", "merchant", 1, "eur"))).code,
            Reject::INVALID_REQUEST);
  EXPECT_EQ(apply(one(posted("x", "customer", "merchant", 1, "USD"))).code,
            Reject::INVALID_REQUEST);
  EXPECT_EQ(apply(one(posted("", "customer", "merchant", 1))).code, Reject::INVALID_REQUEST);
  auto longId = kj::heapString(256);
  for (auto& c : longId)
    c = 'a';
  EXPECT_EQ(apply(one(posted(longId, "customer", "merchant", 1))).code, Reject::INVALID_REQUEST);
  EXPECT_EQ(auditOf().transfers, 0u);
}

TEST_P(LedgerContract, TheAuditCatchesABalanceChangedBehindItsBack) {
  standardAccounts();
  ASSERT_TRUE(apply(one(posted("t1", "customer", "merchant", 100))).ok);
  database->execute("UPDATE ledger_accounts SET credits_posted = 99 WHERE id = 'merchant'")
      .wait(io.waitScope);
  auto report = auditOf();
  EXPECT_FALSE(report.debitsEqualCredits);
  ASSERT_GE(report.mismatches.size(), 1u);
  EXPECT_NE(std::string(report.mismatches[0].cStr()).find("account merchant"), std::string::npos)
      << report.mismatches[0].cStr();
}

TEST_P(LedgerContract, GroupCommitPutsConcurrentTransfersInFewTransactions) {
  standardAccounts();
  GroupCommit<Operation, Outcome> commits(*database, batchFunction());
  auto before = database->transactions;
  constexpr int N = 200;
  kj::Vector<kj::Promise<Outcome>> promises;
  for (int i = 0; i < N; ++i) {
    // One in ten breaks the merchant's limit and must be refused alone.
    auto transfer = i % 10 == 9 ? posted(kj::str("o", i), "merchant", "bank", 1'000'000)
                                : posted(kj::str("t", i), "customer", "merchant", 10);
    promises.add(commits.submit(one(kj::mv(transfer))));
  }
  auto outcomes = kj::joinPromises(promises.releaseAsArray()).wait(io.waitScope);
  int ok = 0;
  for (auto& outcome : outcomes)
    ok += outcome.ok ? 1 : 0;
  EXPECT_EQ(ok, N - N / 10);
  auto used = database->transactions - before;
  EXPECT_LE(used, 3u) << "group commit used one transaction per transfer";
  EXPECT_EQ(commits.commits(), used);
  EXPECT_EQ(balance("merchant").creditsPosted, 10 * (N - N / 10));
  expectClean();
}

TEST_P(LedgerContract, AFailedGroupIsRetriedOneByOneAndNothingIsAppliedTwice) {
  standardAccounts();
  GroupCommit<Operation, Outcome> commits(*database, batchFunction());
  database->failNext = 1;
  postFive(commits);
  EXPECT_EQ(balance("merchant").creditsPosted, 50);
  EXPECT_EQ(auditOf().transfers, 5u);
  // A lone item whose transaction fails is rejected, not retried: its caller retries.
  database->failNext = 1;
  auto failed = commits.submit(one(posted("lone", "customer", "merchant", 10)))
                    .then([](Outcome) { return false; }, [](kj::Exception&&) { return true; })
                    .wait(io.waitScope);
  EXPECT_TRUE(failed);
  EXPECT_EQ(auditOf().transfers, 5u);
  expectClean();
}

TEST_P(LedgerContract, AConflictRunsTheWholeGroupAgainButNotForever) {
  standardAccounts();
  GroupCommit<Operation, Outcome> commits(*database, batchFunction());
  database->conflictNext = 2;
  auto before = database->transactions;
  postFive(commits);
  // The group ran whole three times (not item by item), and only the last one stuck.
  EXPECT_EQ(database->transactions - before, 3u);
  EXPECT_EQ(commits.conflicts(), 2u);
  EXPECT_EQ(balance("merchant").creditsPosted, 50);
  EXPECT_EQ(auditOf().transfers, 5u);
  // A conflict every time: the item fails with it after MAX_CONFLICT_RETRIES more runs.
  constexpr auto RETRIES = GroupCommit<Operation, Outcome>::MAX_CONFLICT_RETRIES;
  database->conflictNext = RETRIES + 1;
  before = database->transactions;
  auto failure = commits.submit(one(posted("lone", "customer", "merchant", 10)))
                     .then([](Outcome) -> kj::Maybe<kj::Exception> { return nullptr; },
                           [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); })
                     .wait(io.waitScope);
  KJ_IF_MAYBE (e, failure) {
    EXPECT_TRUE(isTransactionConflict(*e)) << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "a conflict on every run was retried without end";
  }
  EXPECT_EQ(database->transactions - before, RETRIES + 1u);
  EXPECT_EQ(auditOf().transfers, 5u);
  expectClean();
}

// Two shards' group commits share one database and post between the same two accounts in
// opposite directions, so each transaction meets the accounts in the other's reverse order.
// Locking a batch's accounts in one order keeps them from deadlocking at all (no conflict to
// retry), and every transfer is applied exactly once.
TEST_P(LedgerContract, TwoShardsPostingInOppositeDirectionsNeverDeadlock) {
  ASSERT_TRUE(apply(account("a")).ok);
  ASSERT_TRUE(apply(account("b")).ok);
  GroupCommit<Operation, Outcome> shard1(*database, batchFunction());
  GroupCommit<Operation, Outcome> shard2(*database, batchFunction());
  constexpr int ROUNDS = 200;
  constexpr int EACH = 4;
  int64_t expected = 0;
  for (int round = 0; round < ROUNDS; ++round) {
    kj::Vector<kj::Promise<Outcome>> promises;
    for (int i = 0; i < EACH; ++i) {
      promises.add(shard1.submit(one(posted(kj::str("ab", round, "-", i), "a", "b", 3))));
      promises.add(shard2.submit(one(posted(kj::str("ba", round, "-", i), "b", "a", 2))));
      expected += 1;
    }
    auto outcomes = kj::joinPromises(promises.releaseAsArray()).wait(io.waitScope);
    for (auto& outcome : outcomes)
      ASSERT_TRUE(outcome.ok) << outcome.message.cStr();
  }
  EXPECT_EQ(shard1.conflicts() + shard2.conflicts(), 0u)
      << "the shards' transactions deadlocked and were run again";
  auto a = balance("a");
  EXPECT_EQ(a.debitsPosted, 3 * expected);
  EXPECT_EQ(a.creditsPosted, 2 * expected);
  EXPECT_EQ(auditOf().transfers, static_cast<uint64_t>(2 * expected));
  expectClean();
}

// ---------------------------------------------------------------------------------------------
// Property tests

uint64_t envNumber(const char* name, uint64_t fallback) {
  const char* text = getenv(name);
  return text == nullptr ? fallback : strtoull(text, nullptr, 10);
}

// Everything a step can be checked against, read in the step's own transaction after it ran.
struct Step {
  Outcome outcome;
  std::map<std::string, Balance> balances;
  Audit audit;
};

TEST_P(LedgerContract, RandomSequencesKeepEveryInvariant) {
  uint64_t seed = envNumber("LEDGER_PROPERTY_SEED", std::random_device{}());
  uint64_t sequences =
      envNumber("LEDGER_PROPERTY_SEQUENCES", GetParam() == SqlDialect::SQLITE ? 600 : 120);
  constexpr int STEPS = 12;
  std::printf("ledger property test: LEDGER_PROPERTY_SEED=%llu LEDGER_PROPERTY_SEQUENCES=%llu\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(sequences));
  SCOPED_TRACE(testing::Message() << "LEDGER_PROPERTY_SEED=" << seed);
  std::mt19937_64 random(seed);
  auto pick = [&](uint64_t n) { return random() % n; };
  auto dialect = GetParam();
  const char* names[] = {"a", "b", "limited", "capped"};

  for (uint64_t s = 0; s < sequences; ++s) {
    // A ledger (currency) of its own per sequence: three letters from the sequence number.
    char code[4] = {static_cast<char>('A' + s % 26), static_cast<char>('A' + s / 26 % 26),
                    static_cast<char>('A' + s / 676 % 26), 0};
    kj::StringPtr currency = code;
    for (auto i : kj::indices(names)) {
      Flags flags{i == 2, i == 3};
      ASSERT_TRUE(apply(account(names[i], flags, currency)).ok);
    }
    kj::Vector<Transfer> done;        // accepted requests, to replay
    kj::Vector<kj::String> pendings;  // pending ids, resolved or not
    int64_t now = 1000;
    std::map<std::string, Balance> last;
    for (int step = 0; step < STEPS; ++step) {
      SCOPED_TRACE(testing::Message() << "sequence " << s << " step " << step);
      now += static_cast<int64_t>(pick(3000));
      auto amount = [&]() -> int64_t {
        switch (pick(6)) {
          case 0:
            return MAX - static_cast<int64_t>(pick(3));
          case 1:
            return MAX / 2 + static_cast<int64_t>(pick(3));
          case 2:
            return -static_cast<int64_t>(pick(3));
          default:
            return 1 + static_cast<int64_t>(pick(1000));
        }
      };
      auto account = [&]() { return names[pick(4)]; };
      auto id = kj::str("s", s, "-", step);
      Operation operation;
      operation.nowMs = now;
      bool replay = false;
      int choice = static_cast<int>(pick(9));
      if (choice == 0 && done.size() > 0) {
        // A replay of an accepted request, or the same id with another amount.
        auto& old = done[pick(done.size())];
        auto copy = Transfer{kj::str(old.id),
                             kj::str(old.debitAccount),
                             kj::str(old.creditAccount),
                             kj::str(old.currency),
                             old.amount,
                             old.kind,
                             kj::str(old.pendingId),
                             old.timeoutMs};
        replay = pick(2) == 0;
        if (!replay) copy.amount = copy.amount == MAX ? copy.amount - 1 : copy.amount + 1;
        operation.transfers = list(kj::mv(copy));
      } else if ((choice == 1 || choice == 2) && pendings.size() > 0) {
        auto& target = pendings[pick(pendings.size())];
        auto kind = choice == 1 ? Kind::POST_PENDING : Kind::VOID_PENDING;
        operation.transfers =
            list(resolve(kind, id, target, kind == Kind::VOID_PENDING ? 0 : amount(), currency));
      } else if (choice == 3) {
        operation.transfers =
            list(posted(kj::str(id, "a"), account(), account(), amount(), currency),
                 posted(kj::str(id, "b"), account(), account(), amount(), currency));
      } else if (choice == 4) {
        operation = expireAt(now);
      } else if (choice == 5) {
        operation.transfers = list(pending(id, account(), account(), amount(),
                                           static_cast<int64_t>(pick(2)) * 2000, currency));
      } else {
        operation.transfers = list(posted(id, account(), account(), amount(), currency));
      }
      auto remembered = kj::heapArrayBuilder<Transfer>(operation.transfers.size());
      for (auto& t : operation.transfers) {
        remembered.add(Transfer{kj::str(t.id), kj::str(t.debitAccount), kj::str(t.creditAccount),
                                kj::str(t.currency), t.amount, t.kind, kj::str(t.pendingId),
                                t.timeoutMs});
      }
      auto isExpiry = operation.type == Operation::Type::EXPIRE;
      auto result = database
                        ->transaction([dialect, operation = kj::mv(operation),
                                       currency = kj::str(currency)](SqlTransaction& tx) {
                          Step out;
                          out.outcome =
                              kj::mv(applyBatch(tx, dialect, kj::arrayPtr(&operation, 1))[0]);
                          for (auto& b : loadBalances(tx, currency))
                            out.balances.emplace(std::string(b.id.cStr()), kj::mv(b));
                          out.audit = audit(tx, currency);
                          return out;
                        })
                        .wait(io.waitScope);

      // Balances equal a replay of the log, debits equal credits, limits hold, posts stay
      // within their pending amounts (all checked by the audit).
      EXPECT_TRUE(result.audit.debitsEqualCredits);
      for (auto& line : result.audit.mismatches)
        ADD_FAILURE() << line.cStr();
      // No total ever wraps below zero.
      for (auto& [name, b] : result.balances) {
        EXPECT_GE(b.debitsPending, 0) << name;
        EXPECT_GE(b.debitsPosted, 0) << name;
        EXPECT_GE(b.creditsPending, 0) << name;
        EXPECT_GE(b.creditsPosted, 0) << name;
      }
      // A refusal or a replay changes nothing, except that a post or void refused because its
      // pending transfer expired records that expiry (pending amounts only go down).
      if ((!result.outcome.ok || result.outcome.replayed) && !isExpiry) {
        bool expiredNow =
            std::string(result.outcome.message.cStr()).find("expired") != std::string::npos;
        for (auto& [name, b] : result.balances) {
          auto& before = last[name];
          if (expiredNow) {
            EXPECT_LE(b.debitsPending, before.debitsPending) << name;
            EXPECT_LE(b.creditsPending, before.creditsPending) << name;
          } else {
            EXPECT_EQ(b.debitsPending, before.debitsPending) << name;
            EXPECT_EQ(b.creditsPending, before.creditsPending) << name;
          }
          EXPECT_EQ(b.debitsPosted, before.debitsPosted) << name;
          EXPECT_EQ(b.creditsPosted, before.creditsPosted) << name;
        }
      }
      // Posted totals never go down.
      for (auto& [name, b] : result.balances) {
        EXPECT_GE(b.debitsPosted, last[name].debitsPosted) << name;
        EXPECT_GE(b.creditsPosted, last[name].creditsPosted) << name;
      }
      if (choice == 0 && done.size() > 0) {
        EXPECT_EQ(result.outcome.ok, replay) << result.outcome.message.cStr();
        if (replay) {
          EXPECT_TRUE(result.outcome.replayed);
        } else {
          EXPECT_EQ(result.outcome.code, Reject::IDEMPOTENCY_CONFLICT);
        }
      }
      // Amounts beyond the int64 room of an account are refused, never wrapped.
      for (auto& t : remembered) {
        if (t.amount <= 0 && t.kind != Kind::VOID_PENDING) {
          EXPECT_FALSE(result.outcome.ok);
        }
      }
      if (result.outcome.ok && !result.outcome.replayed) {
        for (auto& t : remembered) {
          if (t.kind == Kind::PENDING) pendings.add(kj::str(t.id));
          done.add(kj::mv(t));
        }
      }
      last = kj::mv(result.balances);
      if (HasFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dialects, LedgerContract,
                         testing::Values(SqlDialect::SQLITE, SqlDialect::POSTGRESQL),
                         [](const testing::TestParamInfo<SqlDialect>& param) {
                           return param.param == SqlDialect::SQLITE ? "Sqlite" : "Postgresql";
                         });

}  // namespace
}  // namespace payhost::plugins::ledger

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  testing::AddGlobalTestEnvironment(new payhost::testsupport::PostgresEnvironment);
  return RUN_ALL_TESTS();
}
