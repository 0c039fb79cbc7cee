// payhost-db-bench: durable database writes per second through the host's pool (the path of
// `ctx.sql(...).transaction(...)`: a connection lease, a worker lease, the transaction on a
// worker thread, the result back on the event loop) beside the same writes through the SQLite
// library directly on the calling thread; and the cost of one lease (acquire + release in a
// `LeaseTable`) beside an inline call. One run, cases interleaved per round, medians printed with
// their ratios.
//
//   payhost-db-bench [--rounds 5] [--writes 500] [--leases 200000] [--dir /tmp] [--json out.json]
//
// Each write is one transaction: BEGIN IMMEDIATE, one INSERT with three bound parameters
// (prepared, bound, stepped, finalized: the same work the pool does), COMMIT. Both sides use
// the pool's settings (WAL, synchronous=FULL: each commit is on disk when it returns) on their
// own file in `--dir`.

#include "host/config/daemon-config.h"
#include "host/log/logger.h"
#include "host/pools/lease-table.h"
#include "host/pools/sql-pool.h"
#include "host/pools/worker-pool.h"

#include <kj/async-io.h>
#include <kj/debug.h>

#include <CLI/CLI.hpp>
#include <sqlite3.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

namespace payhost::bench {
namespace {

double nanosSince(kj::TimePoint start) {
  return static_cast<double>((kj::systemPreciseMonotonicClock().now() - start) / kj::NANOSECONDS);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

void check(int status, sqlite3* db, const char* what) {
  KJ_REQUIRE(status == SQLITE_OK || status == SQLITE_DONE || status == SQLITE_ROW, what,
             sqlite3_errmsg(db));
}

void exec(sqlite3* db, const char* sql) {
  check(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), db, sql);
}

// The direct case: one connection, the pool's settings, one transaction per write.
class DirectSqlite {
public:
  explicit DirectSqlite(const std::string& path) {
    check(
        sqlite3_open_v2(path.c_str(), &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr),
        db, "open");
    exec(db, "PRAGMA journal_mode=WAL");
    exec(db, "PRAGMA synchronous=FULL");
    exec(db,
         "CREATE TABLE IF NOT EXISTS payments (id INTEGER PRIMARY KEY, merchant TEXT, "
         "amount BIGINT, rate REAL)");
  }
  ~DirectSqlite() { sqlite3_close_v2(db); }

  void write(int64_t i) {
    exec(db, "BEGIN IMMEDIATE");
    sqlite3_stmt* statement = nullptr;
    check(
        sqlite3_prepare_v2(db, "INSERT INTO payments (merchant, amount, rate) VALUES ($1, $2, $3)",
                           -1, &statement, nullptr),
        db, "prepare");
    check(sqlite3_bind_text(statement, 1, "merchant-1", -1, SQLITE_TRANSIENT), db, "bind");
    check(sqlite3_bind_int64(statement, 2, i), db, "bind");
    check(sqlite3_bind_double(statement, 3, 0.5), db, "bind");
    check(sqlite3_step(statement), db, "step");
    sqlite3_finalize(statement);
    exec(db, "COMMIT");
  }

private:
  sqlite3* db = nullptr;
};

std::atomic<uint64_t> sink{0};

// What a lease guards, for the inline baseline.
__attribute__((noinline)) void inlineCall(uint64_t i) {
  sink.fetch_add(i, std::memory_order_relaxed);
}

}  // namespace
}  // namespace payhost::bench

int main(int argc, char** argv) {
  using namespace payhost;
  using namespace payhost::bench;
  CLI::App app{"payhost-db-bench: writes through the host's database pool beside SQLite directly"};
  int rounds = 5;
  int writes = 500;
  int leases = 200000;
  std::string dir = std::filesystem::temp_directory_path().native();
  std::string json;
  app.add_option("--rounds", rounds)->capture_default_str();
  app.add_option("--writes", writes, "writes per case and round")->capture_default_str();
  app.add_option("--leases", leases, "lease acquire+release per round")->capture_default_str();
  app.add_option("--dir", dir, "where the two database files go (removed after)")
      ->capture_default_str();
  app.add_option("--json", json, "also write the figures to this file");
  CLI11_PARSE(app, argc, argv);

  auto base = std::filesystem::path(dir) / ("payhost-db-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(base);
  KJ_DEFER({
    std::error_code ignored;
    std::filesystem::remove_all(base, ignored);
  });

  auto io = kj::setupAsyncIo();
  host::LogSink log(LogLevel::ERROR, host::LogFormat::LOGFMT);
  host::WorkerPool::Options workerOptions;
  workerOptions.minThreads = 2;
  workerOptions.maxThreads = 2;
  // Declared first, destroyed last: the worker pool joins its threads before the database pool
  // goes.
  kj::Own<host::SqlPool> pool;
  host::WorkerPool workers(workerOptions, log);
  {
    host::SqlPool::Options options;
    options.name = kj::str("bench");
    options.dialect = SqlDialect::SQLITE;
    options.target = kj::str((base / "pool.sqlite").c_str());
    options.minConnections = 1;
    options.maxConnections = 2;
    options.leaseWait = 10 * kj::SECONDS;
    pool = kj::heap<host::SqlPool>(kj::mv(options), workers, log);
  }
  auto& timer = io.provider->getTimer();
  pool->transaction(
          "bench", timer,
          [](SqlTransaction& tx) {
            tx.execute(
                "CREATE TABLE IF NOT EXISTS payments (id INTEGER PRIMARY KEY, merchant TEXT, "
                "amount BIGINT, rate REAL)");
          })
      .wait(io.waitScope);
  DirectSqlite direct((base / "direct.sqlite").native());

  host::LeaseTable::Options tableOptions;
  tableOptions.pool = kj::str("bench pool");
  tableOptions.unit = kj::str("leases");
  tableOptions.capacityUnit = kj::str("leases");
  tableOptions.capacity = 8;
  host::LeaseTable table(kj::mv(tableOptions));
  table.setQuota("bench", 1, 4);

  std::vector<double> directNs, poolNs, inlineNs, leaseNs;
  for (int round = 0; round < rounds; ++round) {
    auto start = kj::systemPreciseMonotonicClock().now();
    for (int i = 0; i < writes; ++i)
      direct.write(i);
    directNs.push_back(nanosSince(start) / writes);

    start = kj::systemPreciseMonotonicClock().now();
    for (int i = 0; i < writes; ++i) {
      pool->transaction("bench", timer,
                        [i](SqlTransaction& tx) {
                          SqlParam params[] = {"merchant-1", int64_t{i}, 0.5};
                          tx.execute(
                              "INSERT INTO payments (merchant, amount, rate) VALUES ($1, $2, $3)",
                              params);
                        })
          .wait(io.waitScope);
    }
    poolNs.push_back(nanosSince(start) / writes);

    start = kj::systemPreciseMonotonicClock().now();
    for (int i = 0; i < leases; ++i)
      inlineCall(i);
    inlineNs.push_back(nanosSince(start) / leases);

    start = kj::systemPreciseMonotonicClock().now();
    for (int i = 0; i < leases; ++i) {
      auto lease = KJ_ASSERT_NONNULL(table.tryAcquire("bench"));
      inlineCall(i);
    }
    leaseNs.push_back(nanosSince(start) / leases);
  }

  double directPerSecond = 1e9 / median(directNs);
  double poolPerSecond = 1e9 / median(poolNs);
  printf("payhost-db-bench: %d rounds, interleaved; medians\n", rounds);
  printf("  SQLite directly          %8.0f writes/s (%.1f us per durable write)\n", directPerSecond,
         median(directNs) / 1e3);
  printf("  through the pool         %8.0f writes/s (%.1f us)  ratio %.2fx direct's rate\n",
         poolPerSecond, median(poolNs) / 1e3, poolPerSecond / directPerSecond);
  printf("  inline call              %8.1f ns\n", median(inlineNs));
  printf("  lease acquire+release    %8.1f ns  (+%.1f ns, %.1fx inline)\n", median(leaseNs),
         median(leaseNs) - median(inlineNs), median(leaseNs) / median(inlineNs));
  if (!json.empty()) {
    FILE* out = fopen(json.c_str(), "w");
    KJ_REQUIRE(out != nullptr, "cannot write", json.c_str());
    fprintf(
        out,
        "{\n  \"bench\": \"payhost-db-bench\",\n  \"rounds\": %d,\n  \"writes_per_round\": %d,\n"
        "  \"leases_per_round\": %d,\n  \"direct_writes_per_s\": %.0f,\n"
        "  \"pool_writes_per_s\": %.0f,\n  \"pool_vs_direct\": %.3f,\n"
        "  \"inline_ns\": %.2f,\n  \"lease_ns\": %.2f\n}\n",
        rounds, writes, leases, directPerSecond, poolPerSecond, poolPerSecond / directPerSecond,
        median(inlineNs), median(leaseNs));
    fclose(out);
  }
  return 0;
}
