// SqlPool: one contract, run against SQLite (a temp file) and a real PostgreSQL server this test
// starts itself (initdb and postgres as the `postgres` user, on a unix socket in a temp dir).
// If PostgreSQL cannot be started, its half of the suite fails: it never skips.
#include "host/pools/sql-pool.h"

#include "host/config/daemon-config.h"
#include "host/log/logger.h"
#include "host/pools/worker-pool.h"

#include <payhost/group-commit.h>

#include <kj/async-io.h>
#include <kj/mutex.h>

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "tests/support/postgres-server.h"

namespace payhost::host {
namespace {

namespace fs = std::filesystem;
using payhost::testsupport::PostgresEnvironment;
using payhost::testsupport::postgresServer;
using payhost::testsupport::TempDir;

// The pool seen through the SDK's Database, as a plugin sees it.
class PoolDatabase final : public Database {
public:
  PoolDatabase(SqlPool& pool, kj::Timer& timer, kj::StringPtr plugin)
      : pool(pool), timer(timer), plugin(plugin) {}
  kj::StringPtr name() override { return pool.name(); }
  SqlDialect dialect() override { return pool.dialect(); }
  kj::Promise<void> transactionWork(kj::Function<void(SqlTransaction&)> work) override {
    return pool.transaction(plugin, timer, kj::mv(work));
  }

private:
  SqlPool& pool;
  kj::Timer& timer;
  kj::StringPtr plugin;
};

// Work blocks on the gate until the test opens it.
class Gate {
public:
  void wait() const {
    gate.when([](const bool& open) { return open; }, [](const bool&) {});
  }
  void open() { *gate.lockExclusive() = true; }

private:
  kj::MutexGuarded<bool> gate{false};
};

std::string lower(kj::StringPtr text) {
  std::string result(text.cStr());
  std::transform(result.begin(), result.end(), result.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return result;
}

bool contains(kj::StringPtr text, const char* part) {
  return std::string(text.cStr()).find(part) != std::string::npos;
}

class SqlContract : public testing::TestWithParam<SqlDialect> {
protected:
  ~SqlContract() noexcept override {}

  void SetUp() override {
    if (GetParam() == SqlDialect::POSTGRESQL) {
      auto postgres = postgresServer();
      ASSERT_TRUE(postgres != nullptr && !postgres->conninfo.empty())
          << "PostgreSQL could not be started: " << (postgres ? postgres->failure : "");
    }
    pool = makePool(4, 0, 100 * kj::MILLISECONDS);
    // A clean slate: PostgreSQL's schema is shared by every test.
    if (GetParam() == SqlDialect::POSTGRESQL) {
      db("app")
          .transaction([](SqlTransaction& tx) {
            tx.execute("DROP SCHEMA public CASCADE");
            tx.execute("CREATE SCHEMA public");
          })
          .wait(io.waitScope);
    }
  }

  kj::Own<SqlPool> makePool(uint32_t max, uint32_t min, kj::Duration wait) {
    SqlPool::Options options;
    options.name = kj::str("store");
    options.dialect = GetParam();
    options.target = GetParam() == SqlDialect::SQLITE ? kj::str((dir.path / "store.sqlite").c_str())
                                                      : kj::str(postgresServer()->conninfo.c_str());
    options.minConnections = min;
    options.maxConnections = max;
    options.leaseWait = wait;
    return kj::heap<SqlPool>(kj::mv(options), workers, log);
  }

  Database& db(kj::StringPtr plugin) {
    databases.add(kj::heap<PoolDatabase>(*pool, io.provider->getTimer(), plugin));
    return *databases.back();
  }

  kj::StringPtr blobType() { return GetParam() == SqlDialect::SQLITE ? "BLOB" : "BYTEA"; }

  void createItems() {
    auto sql = kj::str(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION, data ",
        blobType(), ", note TEXT)");
    db("app").execute(sql).wait(io.waitScope);
  }

  int64_t count(kj::StringPtr table) {
    return db("app")
        .execute(kj::str("SELECT count(*) FROM ", table))
        .wait(io.waitScope)
        .integer(0, 0);
  }

  kj::AsyncIoContext io = kj::setupAsyncIo();
  LogSink log{LogLevel::ERROR, LogFormat::LOGFMT};
  TempDir dir;
  // Destroyed after the worker pool has joined its threads.
  kj::Own<SqlPool> pool;
  kj::Vector<kj::Own<Database>> databases;
  WorkerPool workers{WorkerPool::Options{2, 8, 100 * kj::MILLISECONDS, 1 * kj::SECONDS}, log};
};

TEST_P(SqlContract, InsertsEachParameterTypeAndReadsThemTyped) {
  createItems();
  kj::byte bytes[] = {0, 1, 2, 0xff};
  auto inserted =
      db("app")
          .execute("INSERT INTO items (id, name, score, data, note) VALUES ($1, $2, $3, $4, $5)",
                   {int64_t(1) << 40, "caf\xc3\xa9", 2.5, kj::arrayPtr(bytes, 4), nullptr})
          .wait(io.waitScope);
  EXPECT_EQ(inserted.changes(), 1u);
  auto row = db("app")
                 .execute("SELECT id, name, score, data, note FROM items WHERE id = $1",
                          {int64_t(1) << 40})
                 .wait(io.waitScope);
  ASSERT_EQ(row.rowCount(), 1u);
  ASSERT_EQ(row.columnCount(), 5u);
  EXPECT_EQ(row.columns()[1], "name");
  EXPECT_EQ(row.integer(0, 0), int64_t(1) << 40);
  EXPECT_EQ(row.text(0, 1), "caf\xc3\xa9");
  EXPECT_EQ(row.real(0, 2), 2.5);
  EXPECT_TRUE(row.blob(0, 3) == kj::arrayPtr(bytes, 4));
  EXPECT_TRUE(row.isNull(0, 4));
  EXPECT_FALSE(row.isNull(0, 0));
  EXPECT_EQ(row.changes(), 0u);

  // Wrong type and wrong index are clear errors.
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { row.integer(0, 1); })) {
    EXPECT_TRUE(contains(e->getDescription(), "column 1 'name') is TEXT, not INTEGER"))
        << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "reading TEXT as INTEGER did not throw";
  }
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { row.text(1, 0); })) {
    EXPECT_TRUE(contains(e->getDescription(), "is out of range (1 rows, 5 columns)"))
        << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "reading row 1 of 1 did not throw";
  }
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { row.text(0, 4); })) {
    EXPECT_TRUE(contains(e->getDescription(), "is NULL, not TEXT")) << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "reading NULL as TEXT did not throw";
  }
}

TEST_P(SqlContract, ATransactionCommitsAndIsVisibleAfterOffTheCallingThread) {
  createItems();
  auto caller = std::this_thread::get_id();
  auto result = db("app")
                    .transaction([caller](SqlTransaction& tx) {
                      tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", {1, "a"});
                      tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", {2, "b"});
                      auto n = tx.execute("SELECT count(*) FROM items").integer(0, 0);
                      return std::make_pair(n, std::this_thread::get_id() != caller);
                    })
                    .wait(io.waitScope);
  EXPECT_EQ(result.first, 2);
  EXPECT_TRUE(result.second) << "the transaction ran on the calling (event loop) thread";
  EXPECT_EQ(count("items"), 2);
}

TEST_P(SqlContract, AThrowRollsBackEverything) {
  createItems();
  auto failed = db("app")
                    .transaction([](SqlTransaction& tx) {
                      tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", {1, "a"});
                      KJ_FAIL_REQUIRE("plugin changed its mind");
                    })
                    .then([]() -> kj::Maybe<kj::Exception> { return nullptr; },
                          [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); })
                    .wait(io.waitScope);
  KJ_IF_MAYBE (e, failed) {
    EXPECT_TRUE(contains(e->getDescription(), "plugin changed its mind"));
  } else {
    ADD_FAILURE() << "the transaction did not reject";
  }
  EXPECT_EQ(count("items"), 0);
}

TEST_P(SqlContract, AUniqueViolationIsAClearErrorAndRollsBack) {
  createItems();
  db("app").execute("INSERT INTO items (id, name) VALUES ($1, $2)", {1, "a"}).wait(io.waitScope);
  auto failed = db("app")
                    .transaction([](SqlTransaction& tx) {
                      tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", {2, "b"});
                      tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", {1, "again"});
                    })
                    .then([]() -> kj::Maybe<kj::Exception> { return nullptr; },
                          [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); })
                    .wait(io.waitScope);
  KJ_IF_MAYBE (e, failed) {
    auto text = lower(e->getDescription());
    EXPECT_NE(text.find("database store: "), std::string::npos) << text;
    EXPECT_NE(text.find("unique"), std::string::npos) << text;
    EXPECT_NE(text.find("insert into items"), std::string::npos) << text;
  } else {
    ADD_FAILURE() << "a duplicate key was accepted";
  }
  EXPECT_EQ(count("items"), 1);
}

TEST_P(SqlContract, ConcurrentTransactionsFromSeveralThreadsAllCommit) {
  db("app").execute("CREATE TABLE counter (n BIGINT)").wait(io.waitScope);
  db("app").execute("INSERT INTO counter (n) VALUES (0)").wait(io.waitScope);
  constexpr int THREADS = 4;
  constexpr int EACH = 10;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < THREADS; ++t) {
    threads.emplace_back([&]() {
      auto threadIo = kj::setupAsyncIo();
      PoolDatabase database(*pool, threadIo.provider->getTimer(), "app");
      for (int i = 0; i < EACH; ++i) {
        KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                       database
                           .transaction([](SqlTransaction& tx) {
                             auto n = tx.execute("SELECT n FROM counter").integer(0, 0);
                             tx.execute("UPDATE counter SET n = n + 1");
                             return n;
                           })
                           .wait(threadIo.waitScope);
                     })) {
          // The pool's wait is short; a lease timeout here would be a test setup problem.
          ADD_FAILURE() << e->getDescription().cStr();
          ++failures;
        }
      }
    });
  }
  for (auto& thread : threads)
    thread.join();
  EXPECT_EQ(failures.load(), 0);
  auto result = db("app").execute("SELECT n FROM counter").wait(io.waitScope);
  EXPECT_EQ(result.integer(0, 0), THREADS * EACH);
  EXPECT_LE(pool->stats().size, 4u);
}

TEST_P(SqlContract, BeyondTheQuotaFailsOverloadedWithinTheWaitAndNeverHangs) {
  pool->setQuota("greedy", 0, 1);
  Gate gate;
  KJ_DEFER(gate.open());
  auto holding = db("greedy").transaction([&gate](SqlTransaction& tx) { gate.wait(); });
  auto started = std::chrono::steady_clock::now();
  auto second = db("greedy")
                    .transaction([](SqlTransaction&) {})
                    .then([]() -> kj::Maybe<kj::Exception> { return nullptr; },
                          [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); })
                    .wait(io.waitScope);
  auto waited = std::chrono::steady_clock::now() - started;
  KJ_IF_MAYBE (e, second) {
    EXPECT_EQ(e->getType(), kj::Exception::Type::OVERLOADED);
    EXPECT_TRUE(contains(e->getDescription(),
                         "plugin greedy: database pool store quota exhausted (1 of 1 connections "
                         "in use); waited 100 ms"))
        << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "a lease beyond the limit was granted";
  }
  // The wait is measured on the loop's timer, whose "now" is the start of the current turn.
  EXPECT_GE(waited, std::chrono::milliseconds(50));
  EXPECT_LT(waited, std::chrono::seconds(5));
  EXPECT_EQ(pool->stats().timeouts, 1u);
  gate.open();
  holding.wait(io.waitScope);
  EXPECT_EQ(pool->leasesHeld("greedy"), 0u);
  // The lease came back: the quota serves again.
  db("greedy").transaction([](SqlTransaction&) {}).wait(io.waitScope);
}

TEST_P(SqlContract, AGreedyPluginCannotTakeAnothersReservation) {
  pool = makePool(2, 0, 100 * kj::MILLISECONDS);
  pool->setQuota("fair", 1, 0);
  Gate gate;
  KJ_DEFER(gate.open());
  auto first = db("greedy").transaction([&gate](SqlTransaction&) { gate.wait(); });
  // The second connection is held back for `fair`.
  auto refused =
      db("greedy")
          .transaction([](SqlTransaction&) {})
          .then([]() { return false; },
                [](kj::Exception&& e) { return e.getType() == kj::Exception::Type::OVERLOADED; })
          .wait(io.waitScope);
  EXPECT_TRUE(refused);
  // `fair` gets its connection at once (SQLite's single writer may still make it wait for the
  // greedy transaction's lock: that is the database, not the pool).
  auto fair = db("fair").transaction([](SqlTransaction&) { return true; });
  EXPECT_EQ(pool->leasesHeld("fair"), 1u);
  EXPECT_EQ(pool->leasesHeld("greedy"), 1u);
  gate.open();
  first.wait(io.waitScope);
  EXPECT_TRUE(fair.wait(io.waitScope));
}

TEST_P(SqlContract, CommitsAreDurableAcrossClosingAndReopeningThePool) {
  if (GetParam() == SqlDialect::SQLITE) {
    auto mode = db("app").execute("PRAGMA journal_mode").wait(io.waitScope);
    EXPECT_EQ(mode.text(0, 0), "wal");
    auto sync = db("app").execute("PRAGMA synchronous").wait(io.waitScope);
    EXPECT_EQ(sync.integer(0, 0), 2) << "synchronous is not FULL";
  } else {
    auto sync = db("app").execute("SHOW synchronous_commit").wait(io.waitScope);
    EXPECT_EQ(sync.text(0, 0), "on");
  }
  createItems();
  db("app").execute("INSERT INTO items (id, name) VALUES ($1, $2)", {7, "kept"}).wait(io.waitScope);
  databases.clear();
  pool = nullptr;
  pool = makePool(2, 1, 100 * kj::MILLISECONDS);
  EXPECT_EQ(pool->stats().size, 1u);
  auto row = db("app").execute("SELECT name FROM items WHERE id = $1", {7}).wait(io.waitScope);
  ASSERT_EQ(row.rowCount(), 1u);
  EXPECT_EQ(row.text(0, 0), "kept");
}

TEST_P(SqlContract, ConnectionsAreOpenedLazilyAndReused) {
  databases.clear();
  pool = makePool(4, 0, 100 * kj::MILLISECONDS);
  EXPECT_EQ(pool->stats().size, 0u);
  for (int i = 0; i < 5; ++i)
    db("app").execute("SELECT 1").wait(io.waitScope);
  auto stats = pool->stats();
  EXPECT_EQ(stats.size, 1u);
  EXPECT_EQ(stats.inUse, 0u);
  EXPECT_EQ(stats.transactions, 5u);
}

TEST_P(SqlContract, ScalingFollowsTheLoadUpAndDownWithinItsBounds) {
  databases.clear();
  SqlPool::Options options;
  options.name = kj::str("store");
  options.dialect = GetParam();
  options.target = GetParam() == SqlDialect::SQLITE ? kj::str((dir.path / "store.sqlite").c_str())
                                                    : kj::str(postgresServer()->conninfo.c_str());
  options.minConnections = 1;
  options.maxConnections = 3;
  options.leaseWait = 5 * kj::SECONDS;
  options.scaling = true;
  options.growAfter = 10 * kj::MILLISECONDS;
  options.idleTimeout = 100 * kj::MILLISECONDS;
  pool = kj::heap<SqlPool>(kj::mv(options), workers, log);
  auto& timer = io.provider->getTimer();
  auto waitFor = [&](auto done) {
    auto deadline = timer.now() + 10 * kj::SECONDS;
    while (!done() && timer.now() < deadline)
      timer.afterDelay(2 * kj::MILLISECONDS).wait(io.waitScope);
    return done();
  };
  EXPECT_EQ(pool->stats().capacity, 1u);
  EXPECT_EQ(pool->stats().size, 1u);

  // Load up: six transactions held open, twice what the pool may have.
  Gate gate;
  KJ_DEFER(gate.open());
  kj::Vector<kj::Promise<void>> load;
  for (int i = 0; i < 6; ++i) {
    load.add(
        db("app").transaction([&gate](SqlTransaction&) { gate.wait(); }).eagerlyEvaluate(nullptr));
  }
  ASSERT_TRUE(waitFor([&]() { return pool->stats().inUse == 3; })) << pool->stats().inUse;
  // Held there however long the others wait: never beyond its maximum.
  timer.afterDelay(60 * kj::MILLISECONDS).wait(io.waitScope);
  auto loaded = pool->stats();
  EXPECT_EQ(loaded.capacity, 3u);
  EXPECT_EQ(loaded.inUse, 3u);
  EXPECT_EQ(loaded.waiting, 3u);
  EXPECT_LE(loaded.size, 3u);
  EXPECT_EQ(loaded.grown, 2u);
  EXPECT_EQ(loaded.shrunk, 0u);
  gate.open();
  kj::joinPromises(load.releaseAsArray()).wait(io.waitScope);

  // Load down: idle connections close after idle_ms, down to the minimum, not below.
  ASSERT_TRUE(waitFor([&]() { return pool->stats().capacity == 1 && pool->stats().size == 1; }))
      << pool->stats().capacity << " " << pool->stats().size;
  timer.afterDelay(250 * kj::MILLISECONDS).wait(io.waitScope);
  auto idle = pool->stats();
  EXPECT_EQ(idle.size, 1u);
  EXPECT_EQ(idle.capacity, 1u);
  EXPECT_EQ(idle.shrunk, 2u);
  EXPECT_EQ(idle.transactions, 6u);
  // And it grows again under the next load.
  Gate again;
  KJ_DEFER(again.open());
  auto first =
      db("app").transaction([&again](SqlTransaction&) { again.wait(); }).eagerlyEvaluate(nullptr);
  auto second =
      db("app").transaction([&again](SqlTransaction&) { again.wait(); }).eagerlyEvaluate(nullptr);
  ASSERT_TRUE(waitFor([&]() { return pool->stats().inUse == 2; }));
  EXPECT_EQ(pool->stats().capacity, 2u);
  again.open();
  first.wait(io.waitScope);
  second.wait(io.waitScope);
}

TEST_P(SqlContract, ParametersMustBeNumberedAndGiven) {
  db("app").execute("CREATE TABLE t (a BIGINT)").wait(io.waitScope);
  auto failed = db("app")
                    .execute("INSERT INTO t (a) VALUES ($2)", {1})
                    .then([](SqlResult&&) { return kj::str("no error"); },
                          [](kj::Exception&& e) { return kj::str(e.getDescription()); })
                    .wait(io.waitScope);
  EXPECT_TRUE(contains(failed, "database store: ")) << failed.cStr();
}

INSTANTIATE_TEST_SUITE_P(Dialects, SqlContract,
                         testing::Values(SqlDialect::SQLITE, SqlDialect::POSTGRESQL),
                         [](const testing::TestParamInfo<SqlDialect>& param) {
                           return param.param == SqlDialect::SQLITE ? "Sqlite" : "Postgresql";
                         });

// PostgreSQL only: a connection that breaks is discarded and replaced.
class PostgresPool : public SqlContract {};

TEST_P(PostgresPool, ABrokenConnectionIsDiscardedAndReplaced) {
  // The connection terminates its own backend: that statement fails, the next transaction gets
  // a fresh connection.
  auto failed = db("app")
                    .execute("SELECT pg_terminate_backend(pg_backend_pid())")
                    .then([](SqlResult&&) { return false; }, [](kj::Exception&&) { return true; })
                    .wait(io.waitScope);
  EXPECT_TRUE(failed);
  EXPECT_EQ(pool->stats().discarded, 1u);
  auto row = db("app").execute("SELECT 41 + 1 AS answer").wait(io.waitScope);
  EXPECT_EQ(row.integer(0, 0), 42);
  EXPECT_EQ(pool->stats().size, 1u);
}

// Two transactions that lock rows 1 and 2 of `rows` in opposite orders, each holding its first
// row until both do: PostgreSQL must abort one of them (deadlock_detected, after its
// deadlock_timeout of 1 s). Each logs `item` in `attempts` before its second lock.
std::atomic<int> deadlockArrivals{0};

void lockBothRows(SqlTransaction& tx, int64_t item) {
  int64_t first = item == 1 ? 1 : 2;
  tx.execute("UPDATE rows SET n = n + 1 WHERE id = $1", {first});
  tx.execute("INSERT INTO attempts (item) VALUES ($1)", {item});
  ++deadlockArrivals;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (deadlockArrivals.load() < 2 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  tx.execute("UPDATE rows SET n = n + 1 WHERE id = $1", {3 - first});
}

void createDeadlockTables(Database& db, kj::WaitScope& waitScope) {
  deadlockArrivals = 0;
  db.transaction([](SqlTransaction& tx) {
      tx.execute("CREATE TABLE rows (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)");
      tx.execute("INSERT INTO rows (id, n) VALUES (1, 0), (2, 0)");
      tx.execute("CREATE TABLE attempts (item BIGINT NOT NULL)");
    }).wait(waitScope);
}

TEST_P(PostgresPool, ADeadlockFailsAsARetryableConflictAndRollsBack) {
  createDeadlockTables(db("app"), io.waitScope);
  auto run = [&](int64_t item) {
    return db("app")
        .transaction([item](SqlTransaction& tx) { lockBothRows(tx, item); })
        .then([]() -> kj::Maybe<kj::Exception> { return nullptr; },
              [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); });
  };
  auto both = kj::heapArrayBuilder<kj::Promise<kj::Maybe<kj::Exception>>>(2);
  both.add(run(1));
  both.add(run(2));
  auto results = kj::joinPromises(both.finish()).wait(io.waitScope);
  int failed = 0;
  for (auto& result : results) {
    KJ_IF_MAYBE (e, result) {
      ++failed;
      EXPECT_EQ(e->getType(), kj::Exception::Type::OVERLOADED);
      EXPECT_TRUE(isTransactionConflict(*e)) << e->getDescription().cStr();
      auto text = lower(e->getDescription());
      EXPECT_NE(text.find("database store: "), std::string::npos) << text;
      EXPECT_NE(text.find("deadlock detected"), std::string::npos) << text;
    }
  }
  EXPECT_EQ(failed, 1) << "PostgreSQL aborts exactly one side of a deadlock";
  // The aborted side left nothing: one attempt logged, each row updated once.
  EXPECT_EQ(count("attempts"), 1);
  auto rows = db("app").execute("SELECT n FROM rows ORDER BY id").wait(io.waitScope);
  EXPECT_EQ(rows.integer(0, 0), 1);
  EXPECT_EQ(rows.integer(1, 0), 1);
  // Other failures are not conflicts.
  auto other = db("app")
                   .execute("SELECT * FROM no_such_table")
                   .then([](SqlResult&&) -> kj::Maybe<kj::Exception> { return nullptr; },
                         [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); })
                   .wait(io.waitScope);
  KJ_IF_MAYBE (e, other) {
    EXPECT_FALSE(isTransactionConflict(*e)) << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "a missing table was not an error";
  }
}

// Two group commits (two shards) whose transactions deadlock: the one PostgreSQL aborts runs
// again, and both items are applied exactly once.
TEST_P(PostgresPool, GroupCommitRunsATransactionAbortedByADeadlockAgain) {
  createDeadlockTables(db("app"), io.waitScope);
  auto batch = +[](SqlTransaction& tx, kj::ArrayPtr<const int64_t> items) {
    auto results = kj::heapArrayBuilder<bool>(items.size());
    for (auto item : items) {
      lockBothRows(tx, item);
      results.add(true);
    }
    return results.finish();
  };
  GroupCommit<int64_t, bool> shard1(db("app"), batch);
  GroupCommit<int64_t, bool> shard2(db("app"), batch);
  auto both = kj::heapArrayBuilder<kj::Promise<bool>>(2);
  both.add(shard1.submit(1));
  both.add(shard2.submit(2));
  auto results = kj::joinPromises(both.finish()).wait(io.waitScope);
  EXPECT_TRUE(results[0] && results[1]);
  EXPECT_EQ(shard1.conflicts() + shard2.conflicts(), 1u);
  EXPECT_EQ(shard1.commits() + shard2.commits(), 2u);
  EXPECT_EQ(count("attempts"), 2) << "the aborted attempt's insert was rolled back";
  auto rows = db("app").execute("SELECT n FROM rows ORDER BY id").wait(io.waitScope);
  EXPECT_EQ(rows.integer(0, 0), 2);
  EXPECT_EQ(rows.integer(1, 0), 2);
}

INSTANTIATE_TEST_SUITE_P(Dialects, PostgresPool, testing::Values(SqlDialect::POSTGRESQL),
                         [](const testing::TestParamInfo<SqlDialect>&) { return "Postgresql"; });

}  // namespace
}  // namespace payhost::host

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  testing::AddGlobalTestEnvironment(new payhost::testsupport::PostgresEnvironment);
  return RUN_ALL_TESTS();
}
