// payhost-ledger-bench: durable ledger transfers per second with group commit (the ledger
// plugin's engine and <payhost/group-commit.h> over the host's SqlPool, N transfers in flight)
// beside the naive rate of the same writes into SQLite directly, one durable transaction per
// transfer (WAL, synchronous=FULL), interleaved in one run on the same disk; prints the ratio.
// In process: no payhostd, no RPC (the whole payment flow is not measured here).
#include "host/config/daemon-config.h"
#include "host/log/logger.h"
#include "host/pools/sql-pool.h"
#include "host/pools/worker-pool.h"

#include <payhost/group-commit.h>

#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/vector.h>

#include <CLI/CLI.hpp>
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "engine.h"

namespace payhost::plugins::ledger {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

void check(int status, sqlite3* db, const char* what) {
  if (status != SQLITE_OK && status != SQLITE_DONE && status != SQLITE_ROW) {
    KJ_FAIL_REQUIRE("sqlite", what, sqlite3_errmsg(db));
  }
}

void exec(sqlite3* db, const char* sql) {
  check(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), db, sql);
}

// The same writes the ledger makes for one posted transfer, one durable transaction each.
double naiveRate(const std::string& path, int count, int round) {
  sqlite3* db = nullptr;
  check(sqlite3_open(path.c_str(), &db), db, "open");
  KJ_DEFER(sqlite3_close(db));
  exec(db, "PRAGMA journal_mode=WAL");
  exec(db, "PRAGMA synchronous=FULL");
  exec(db,
       "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, debits BIGINT, credits BIGINT);"
       "CREATE TABLE IF NOT EXISTS transfers (seq INTEGER PRIMARY KEY, id TEXT UNIQUE, "
       "debit TEXT, credit TEXT, amount BIGINT);"
       "INSERT OR IGNORE INTO accounts VALUES ('customers', 0, 0), ('merchant', 0, 0)");
  sqlite3_stmt* insert = nullptr;
  sqlite3_stmt* debit = nullptr;
  sqlite3_stmt* credit = nullptr;
  sqlite3_stmt* read = nullptr;
  check(sqlite3_prepare_v2(db,
                           "INSERT INTO transfers (id, debit, credit, amount) VALUES (?1, "
                           "'customers', 'merchant', 7)",
                           -1, &insert, nullptr),
        db, "prepare");
  check(sqlite3_prepare_v2(db, "UPDATE accounts SET debits = debits + 7 WHERE id = 'customers'", -1,
                           &debit, nullptr),
        db, "prepare");
  check(sqlite3_prepare_v2(db, "UPDATE accounts SET credits = credits + 7 WHERE id = 'merchant'",
                           -1, &credit, nullptr),
        db, "prepare");
  check(sqlite3_prepare_v2(db,
                           "SELECT debits, credits FROM accounts WHERE id IN ('customers', "
                           "'merchant')",
                           -1, &read, nullptr),
        db, "prepare");
  auto started = Clock::now();
  for (int i = 0; i < count; ++i) {
    exec(db, "BEGIN IMMEDIATE");
    while (sqlite3_step(read) == SQLITE_ROW) {
    }
    sqlite3_reset(read);
    auto id = "n" + std::to_string(round) + "-" + std::to_string(i);
    sqlite3_bind_text(insert, 1, id.c_str(), -1, SQLITE_TRANSIENT);
    check(sqlite3_step(insert), db, "insert");
    sqlite3_reset(insert);
    check(sqlite3_step(debit), db, "debit");
    sqlite3_reset(debit);
    check(sqlite3_step(credit), db, "credit");
    sqlite3_reset(credit);
    exec(db, "COMMIT");
  }
  double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  sqlite3_finalize(insert);
  sqlite3_finalize(debit);
  sqlite3_finalize(credit);
  sqlite3_finalize(read);
  return count / seconds;
}

kj::Array<Outcome> applySqlite(SqlTransaction& tx, kj::ArrayPtr<const Operation> operations) {
  return applyBatch(tx, SqlDialect::SQLITE, operations);
}

class PoolDatabase final : public Database {
public:
  PoolDatabase(host::SqlPool& pool, kj::Timer& timer) : pool(pool), timer(timer) {}
  kj::StringPtr name() override { return pool.name(); }
  SqlDialect dialect() override { return pool.dialect(); }
  kj::Promise<void> transactionWork(kj::Function<void(SqlTransaction&)> work) override {
    return pool.transaction("ledger", timer, kj::mv(work));
  }

private:
  host::SqlPool& pool;
  kj::Timer& timer;
};

Operation transfer(kj::String id) {
  Operation operation;
  auto transfers = kj::heapArrayBuilder<Transfer>(1);
  transfers.add(Transfer{kj::mv(id), kj::str("customers"), kj::str("merchant"), kj::str("EUR"), 7,
                         Kind::POSTED, kj::str(), 0});
  operation.transfers = transfers.finish();
  return operation;
}

struct Grouped {
  double rate;
  uint64_t commits;
};

Grouped groupedRate(kj::AsyncIoContext& io, Database& database, int count, int inFlight,
                    int round) {
  GroupCommit<Operation, Outcome> commits(database, &applySqlite);
  int next = 0;
  int failures = 0;
  struct Loop {
    static kj::Promise<void> run(GroupCommit<Operation, Outcome>& commits, int& next, int count,
                                 int round, int& failures) {
      if (next >= count) return kj::READY_NOW;
      auto id = kj::str("g", round, "-", next++);
      return commits.submit(transfer(kj::mv(id)))
          .then([&commits, &next, count, round, &failures](Outcome outcome) {
            if (!outcome.ok) ++failures;
            return run(commits, next, count, round, failures);
          });
    }
  };
  auto started = Clock::now();
  kj::Vector<kj::Promise<void>> loops;
  for (int i = 0; i < inFlight; ++i)
    loops.add(Loop::run(commits, next, count, round, failures));
  kj::joinPromises(loops.releaseAsArray()).wait(io.waitScope);
  double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  KJ_REQUIRE(failures == 0, "transfers refused", failures);
  return Grouped{count / seconds, commits.commits()};
}

int run(int argc, char** argv) {
  CLI::App app{
      "payhost-ledger-bench: group-committed ledger transfers vs one SQLite transaction "
      "per transfer"};
  std::string dirOption = (fs::temp_directory_path() / "payhost-ledger-bench").native();
  int rounds = 3;
  int count = 2000;
  int inFlight = 64;
  std::string json;
  app.add_option("--dir", dirOption, "directory for the SQLite files (a real disk, not tmpfs)");
  app.add_option("--rounds", rounds, "interleaved rounds");
  app.add_option("--transfers", count, "transfers per case per round");
  app.add_option("--in-flight", inFlight, "transfers in flight for the group-commit case");
  app.add_option("--json", json, "write the results as JSON here");
  CLI11_PARSE(app, argc, argv);

  fs::remove_all(dirOption);
  fs::create_directories(dirOption);
  auto io = kj::setupAsyncIo();
  host::LogSink log{LogLevel::ERROR, host::LogFormat::LOGFMT};
  host::WorkerPool workers{host::WorkerPool::Options{2, 4, 10 * kj::SECONDS, 1 * kj::SECONDS}, log};
  host::SqlPool::Options options;
  options.name = kj::str("ledger");
  options.target = kj::str((fs::path(dirOption) / "ledger.sqlite").c_str());
  options.maxConnections = 2;
  options.leaseWait = 10 * kj::SECONDS;
  host::SqlPool pool(kj::mv(options), workers, log);
  PoolDatabase database(pool, io.provider->getTimer());
  database
      .transaction([](SqlTransaction& tx) {
        createSchema(tx, SqlDialect::SQLITE);
        Operation a;
        a.type = Operation::Type::CREATE_ACCOUNT;
        a.account = AccountSpec{kj::str("customers"), kj::str("EUR"), {}};
        Operation b;
        b.type = Operation::Type::CREATE_ACCOUNT;
        b.account = AccountSpec{kj::str("merchant"), kj::str("EUR"), Flags{true, false}};
        Operation both[] = {kj::mv(a), kj::mv(b)};
        applyBatch(tx, SqlDialect::SQLITE, both);
      })
      .wait(io.waitScope);

  std::vector<double> naive, grouped;
  uint64_t commitCount = 0;
  for (int r = 0; r < rounds; ++r) {
    naive.push_back(naiveRate((fs::path(dirOption) / "naive.sqlite").native(), count, r));
    auto g = groupedRate(io, database, count, inFlight, r);
    grouped.push_back(g.rate);
    commitCount += g.commits;
    std::printf("round %d: naive %.0f transfers/s, group commit %.0f transfers/s (%llu commits)\n",
                r + 1, naive.back(), grouped.back(), static_cast<unsigned long long>(g.commits));
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  double n = median(naive);
  double g = median(grouped);
  std::printf("median: naive %.0f/s, group commit %.0f/s, ratio %.1fx; %.1f transfers per commit\n",
              n, g, g / n, static_cast<double>(count) * rounds / static_cast<double>(commitCount));
  database
      .transaction([](SqlTransaction& tx) {
        auto report = audit(tx, "EUR");
        KJ_REQUIRE(report.mismatches.size() == 0 && report.debitsEqualCredits,
                   "the audit found a mismatch after the benchmark");
      })
      .wait(io.waitScope);
  if (!json.empty()) {
    FILE* file = fopen(json.c_str(), "w");
    KJ_REQUIRE(file != nullptr, "cannot write", json.c_str());
    std::fprintf(file,
                 "{\"benchmark\": \"ledger-group-commit\", \"rounds\": %d, \"transfers\": %d, "
                 "\"in_flight\": %d, \"naive_per_s\": %.0f, \"group_commit_per_s\": %.0f, "
                 "\"ratio\": %.2f, \"transfers_per_commit\": %.1f}\n",
                 rounds, count, inFlight, n, g, g / n,
                 static_cast<double>(count) * rounds / static_cast<double>(commitCount));
    fclose(file);
  }
  fs::remove_all(dirOption);
  return 0;
}

}  // namespace
}  // namespace payhost::plugins::ledger

int main(int argc, char** argv) {
  return payhost::plugins::ledger::run(argc, argv);
}
