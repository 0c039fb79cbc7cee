#include "host/pools/sql-pool.h"

#include "host/pools/lease-table.h"
#include "host/pools/worker-pool.h"
#include "host/util/errors.h"

#include <kj/debug.h>
#include <kj/mutex.h>
#include <kj/vector.h>

#include <libpq-fe.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <string>
#include <thread>

#include "sdk/src/sql-connection.h"

namespace payhost::host {

namespace {

// SQLite's connection is the SDK's (sdk/src/sql-connection.h), which TestHost uses too, so plugin
// unit tests see this pool's behaviour; PostgreSQL's is here.
using Connection = _::SqlConnection;

// PostgreSQL type OIDs (pg_type.h) that map to something other than TEXT.
constexpr Oid BOOL_OID = 16;
constexpr Oid BYTEA_OID = 17;
constexpr Oid INT8_OID = 20;
constexpr Oid INT2_OID = 21;
constexpr Oid INT4_OID = 23;
constexpr Oid OID_OID = 26;
constexpr Oid FLOAT4_OID = 700;
constexpr Oid FLOAT8_OID = 701;
constexpr Oid NUMERIC_OID = 1700;

class PostgresConnection final : public Connection {
public:
  PostgresConnection(kj::StringPtr pool, kj::StringPtr conninfo) : pool(pool) {
    conn = PQconnectdb(conninfo.cStr());
    if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
      auto message = kj::str(conn == nullptr ? "out of memory" : PQerrorMessage(conn));
      PQfinish(conn);
      conn = nullptr;
      PAYHOST_FAIL(FAILED, "database ", pool, ": cannot connect to PostgreSQL: ", trim(message));
    }
    PQsetNoticeProcessor(
        conn, [](void*, const char*) {}, nullptr);
  }
  ~PostgresConnection() noexcept(false) override { PQfinish(conn); }
  KJ_DISALLOW_COPY(PostgresConnection);

  kj::StringPtr beginStatement() override { return "BEGIN"; }
  bool broken() override { return PQstatus(conn) != CONNECTION_OK; }

  SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) override {
    auto texts = kj::heapArrayBuilder<kj::String>(params.size());
    auto values = kj::heapArray<const char*>(params.size());
    auto lengths = kj::heapArray<int>(params.size());
    auto formats = kj::heapArray<int>(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      auto& param = params[i];
      lengths[i] = 0;
      formats[i] = 0;
      switch (param.type()) {
        case SqlType::NULL_:
          texts.add();
          values[i] = nullptr;
          break;
        case SqlType::INTEGER:
          texts.add(kj::str(param.integer()));
          values[i] = texts.back().cStr();
          break;
        case SqlType::REAL: {
          char buffer[64];
          snprintf(buffer, sizeof(buffer), "%.17g", param.real());
          texts.add(kj::str(buffer));
          values[i] = texts.back().cStr();
          break;
        }
        case SqlType::TEXT:
          texts.add(kj::heapString(reinterpret_cast<const char*>(param.bytes().begin()),
                                   param.bytes().size()));
          values[i] = texts.back().cStr();
          break;
        case SqlType::BLOB:
          texts.add();
          values[i] = reinterpret_cast<const char*>(param.bytes().begin());
          lengths[i] = static_cast<int>(param.bytes().size());
          formats[i] = 1;
          break;
      }
    }
    PGresult* result = PQexecParams(conn, sql.cStr(), static_cast<int>(params.size()), nullptr,
                                    values.begin(), lengths.begin(), formats.begin(), 0);
    KJ_DEFER(PQclear(result));
    auto status = result == nullptr ? PGRES_FATAL_ERROR : PQresultStatus(result);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
      auto message =
          kj::str(result == nullptr ? PQerrorMessage(conn) : PQresultErrorMessage(result));
      const char* field =
          result == nullptr ? nullptr : PQresultErrorField(result, PG_DIAG_SQLSTATE);
      kj::StringPtr state = field == nullptr ? "" : field;
      if (state == "40P01" || state == "40001") {
        // Deadlock or serialization failure: the server rolled the transaction back to let a
        // concurrent one through. The SDK's isTransactionConflict() recognises this shape.
        PAYHOST_FAIL(OVERLOADED, "database ", pool,
                     ": transaction aborted by a conflict with a concurrent one; nothing of it "
                     "was applied and it may be run again (SQLSTATE ",
                     state, "): ", trim(message), " (in: ", sql, ")");
      }
      PAYHOST_FAIL(FAILED, "database ", pool, ": ", trim(message), " (in: ", sql, ")");
    }
    int rows = PQntuples(result);
    int columns = PQnfields(result);
    auto names = kj::heapArrayBuilder<kj::String>(columns);
    for (int c = 0; c < columns; ++c)
      names.add(kj::str(PQfname(result, c)));
    auto cells = kj::heapArrayBuilder<SqlValue>(static_cast<size_t>(rows) * columns);
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < columns; ++c)
        cells.add(cell(result, r, c));
    }
    uint64_t changes = strtoull(PQcmdTuples(result), nullptr, 10);
    if (status == PGRES_TUPLES_OK && columns > 0) {
      // A SELECT's count is the rows it returned, not rows it changed.
      kj::StringPtr command = PQcmdStatus(result);
      if (command.startsWith("SELECT")) changes = 0;
    }
    return SqlResult(names.finish(), cells.finish(), changes);
  }

private:
  kj::StringPtr pool;
  PGconn* conn = nullptr;

  static kj::String trim(kj::StringPtr message) {
    size_t size = message.size();
    while (size > 0 && (message[size - 1] == '\n' || message[size - 1] == ' '))
      --size;
    return kj::heapString(message.begin(), size);
  }

  SqlValue cell(PGresult* result, int row, int column) {
    SqlValue value;
    if (PQgetisnull(result, row, column)) return value;
    const char* text = PQgetvalue(result, row, column);
    int length = PQgetlength(result, row, column);
    switch (PQftype(result, column)) {
      case INT2_OID:
      case INT4_OID:
      case INT8_OID:
      case OID_OID:
        value.type = SqlType::INTEGER;
        value.integer = strtoll(text, nullptr, 10);
        return value;
      case BOOL_OID:
        value.type = SqlType::INTEGER;
        value.integer = text[0] == 't' ? 1 : 0;
        return value;
      case FLOAT4_OID:
      case FLOAT8_OID:
      case NUMERIC_OID:
        value.type = SqlType::REAL;
        value.real = strtod(text, nullptr);
        return value;
      case BYTEA_OID: {
        size_t size = 0;
        auto bytes = PQunescapeBytea(reinterpret_cast<const unsigned char*>(text), &size);
        KJ_DEFER(PQfreemem(bytes));
        value.type = SqlType::BLOB;
        value.bytes = kj::heapArray<kj::byte>(bytes, size);
        return value;
      }
      default:
        return SqlValue::ofText(kj::arrayPtr(text, length));
    }
  }
};

LeaseTable::Options leaseOptions(const SqlPool::Options& options) {
  LeaseTable::Options result;
  result.pool = kj::str("database pool ", options.name);
  result.unit = kj::str("connections");
  result.capacityUnit = kj::str("connections");
  result.capacity = options.maxConnections;
  result.wait = options.leaseWait;
  return result;
}

kj::TimePoint now() {
  return kj::systemPreciseMonotonicClock().now();
}

}  // namespace

class SqlPool::Impl {
public:
  Impl(Options options, WorkerPool& workers, LogSink& log)
      : options(kj::mv(options)), workers(workers), log(log), leases(leaseOptions(this->options)) {
    KJ_REQUIRE(this->options.maxConnections >= 1 &&
                   this->options.minConnections <= this->options.maxConnections,
               "database pool bounds must satisfy min <= max, 1 <= max",
               this->options.minConnections, this->options.maxConnections);
    auto locked = state.lockExclusive();
    for (uint32_t i = 0; i < this->options.minConnections; ++i) {
      locked->idle.push_back(Idle{open(), now()});
      ++locked->size;
    }
    locked->lastBusy = now();
    if (this->options.scaling) {
      leases.setSoftCapacity(kj::max(this->options.minConnections, 1u));
      maintenance = std::thread([this]() { maintain(); });
    }
  }

  ~Impl() noexcept(false) {
    if (maintenance.joinable()) {
      state.lockExclusive()->stopping = true;
      maintenance.join();
    }
  }

  struct Idle {
    kj::Own<Connection> connection;
    kj::TimePoint since;
  };

  struct State {
    // Most recently used last.
    std::deque<Idle> idle;
    uint32_t size = 0;
    uint64_t transactions = 0;
    uint64_t discarded = 0;
    uint64_t grown = 0;
    uint64_t shrunk = 0;
    // When a lease was last in use or waited for.
    kj::TimePoint lastBusy = kj::origin<kj::TimePoint>();
    bool stopping = false;
  };

  Options options;
  WorkerPool& workers;
  LogSink& log;
  LeaseTable leases;
  kj::MutexGuarded<State> state;
  std::thread maintenance;

  kj::Own<Connection> open() {
    if (options.dialect == SqlDialect::SQLITE) {
      return kj::heap<_::SqliteConnection>(options.name, options.target);
    }
    return kj::heap<PostgresConnection>(options.name, options.target);
  }

  kj::Promise<void> transaction(kj::StringPtr plugin, kj::Timer& timer,
                                kj::Function<void(SqlTransaction&)> work, uint64_t owner) {
    auto name = std::string(plugin.cStr());
    kj::Promise<LeaseTable::Lease> leased = nullptr;
    KJ_IF_MAYBE (lease, leases.tryAcquire(plugin, owner)) {
      leased = kj::mv(*lease);
    } else if (options.scaling) {
      // Scaling: a lease still waiting after `growAfter` asks for one more connection.
      auto grow = timer.afterDelay(options.growAfter)
                      .then([this]() { maybeGrow(); })
                      .eagerlyEvaluate([](kj::Exception&&) {});
      leased = leases.acquire(plugin, timer, owner).attach(kj::mv(grow));
    } else {
      leased = leases.acquire(plugin, timer, owner);
    }
    return leased.then([this, name = kj::mv(name), &timer, owner,
                        work = kj::mv(work)](LeaseTable::Lease lease) mutable {
      // The lease goes back when the worker's function goes (after it ran, or if it never
      // runs).
      return workers.run(
          name, timer,
          [this, work = kj::mv(work), lease = kj::mv(lease)]() mutable { runOnWorker(work); },
          owner);
    });
  }

  void maybeGrow() {
    if (leases.waitingForCapacity() == 0) return;
    auto before = leases.softCapacity();
    if (before >= options.maxConnections) return;
    auto waited = leases.takeMaxWait();
    leases.setSoftCapacity(before + 1);
    {
      auto locked = state.lockExclusive();
      ++locked->grown;
      locked->lastBusy = now();
    }
    auto from = kj::str(before);
    auto to = kj::str(before + 1);
    auto reason = kj::str("a lease waited ", waited / kj::MILLISECONDS, " ms (grow_after_ms ",
                          options.growAfter / kj::MILLISECONDS, ")");
    LogField fields[] = {{"pool", options.name}, {"from", from}, {"to", to}, {"reason", reason}};
    log.write(LogLevel::INFO, "pool.grow", nullptr, fields);
  }

  // The maintenance thread: closes connections idle longer than `idleTimeout` down to
  // `minConnections`, and lowers the pool's size with them (never below max(min, 1)). Closing a
  // connection is blocking I/O, so it happens here, never on a worker running plugin work or an
  // event loop.
  void maintain() {
    auto check = options.idleTimeout / 4;
    if (check < 1 * kj::MILLISECONDS) check = 1 * kj::MILLISECONDS;
    for (;;) {
      kj::Vector<kj::Own<Connection>> closing;
      kj::Vector<kj::String> reasons;
      {
        auto locked = state.lockExclusive();
        locked.wait([](const State& s) { return s.stopping; }, check);
        if (locked->stopping) return;
        auto at = now();
        auto stats = leases.stats();
        if (stats.inUse > 0 || stats.waiting > 0) locked->lastBusy = at;
        // Oldest idle first (the vector is most recently used last).
        while (!locked->idle.empty() && locked->size > options.minConnections &&
               at - locked->idle[0].since >= options.idleTimeout) {
          auto idleFor = at - locked->idle[0].since;
          closing.add(kj::mv(locked->idle[0].connection));
          locked->idle.pop_front();
          --locked->size;
          reasons.add(kj::str("connection idle ", idleFor / kj::MILLISECONDS, " ms (idle_ms ",
                              options.idleTimeout / kj::MILLISECONDS, ")"));
        }
        if (closing.empty() && at - locked->lastBusy >= options.idleTimeout &&
            leases.softCapacity() > kj::max(locked->size, kj::max(options.minConnections, 1u))) {
          // Room to grow that nothing used for a whole idle period: give it up too.
          reasons.add(kj::str("no lease for ", (at - locked->lastBusy) / kj::MILLISECONDS,
                              " ms (idle_ms ", options.idleTimeout / kj::MILLISECONDS, ")"));
          locked->lastBusy = at;
        }
      }
      for (auto& reason : reasons) {
        auto before = leases.softCapacity();
        auto floor = kj::max(options.minConnections, 1u);
        if (before > floor) {
          leases.setSoftCapacity(before - 1);
          state.lockExclusive()->shrunk++;
        }
        auto from = kj::str(before);
        auto to = kj::str(kj::max(before - 1, floor));
        LogField fields[] = {
            {"pool", options.name}, {"from", from}, {"to", to}, {"reason", reason}};
        log.write(LogLevel::INFO, "pool.shrink", nullptr, fields);
      }
      closing.clear();
    }
  }

  void runOnWorker(kj::Function<void(SqlTransaction&)>& work) {
    kj::Maybe<kj::Own<Connection>> taken;
    {
      auto locked = state.lockExclusive();
      if (!locked->idle.empty()) {
        taken = kj::mv(locked->idle.back().connection);
        locked->idle.pop_back();
      }
    }
    kj::Own<Connection> connection;
    KJ_IF_MAYBE (existing, taken) {
      connection = kj::mv(*existing);
    } else {
      connection = open();
      ++state.lockExclusive()->size;
    }
    auto giveBack = kj::defer([&]() {
      auto locked = state.lockExclusive();
      ++locked->transactions;
      locked->lastBusy = now();
      if (connection->broken()) {
        --locked->size;
        ++locked->discarded;
        LogField fields[] = {{"pool", options.name}, {"reason", "connection broken"}};
        log.write(LogLevel::WARNING, "pool.connection_discarded", nullptr, fields);
        auto gone = kj::mv(connection);
      } else {
        locked->idle.push_back(Idle{kj::mv(connection), now()});
      }
    });
    _::runTransaction(*connection, work);
  }
};

SqlPool::SqlPool(Options options, WorkerPool& workers, LogSink& log)
    : impl(kj::heap<Impl>(kj::mv(options), workers, log)) {}
SqlPool::~SqlPool() noexcept(false) = default;

kj::StringPtr SqlPool::name() const {
  return impl->options.name;
}

SqlDialect SqlPool::dialect() const {
  return impl->options.dialect;
}

void SqlPool::setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit) {
  impl->leases.setQuota(plugin, reserve, limit);
}

kj::Promise<void> SqlPool::transaction(kj::StringPtr plugin, kj::Timer& timer,
                                       kj::Function<void(SqlTransaction&)> work, uint64_t owner) {
  return impl->transaction(plugin, timer, kj::mv(work), owner);
}

SqlPool::Stats SqlPool::stats() const {
  auto table = impl->leases.stats();
  auto capacity = impl->leases.softCapacity();
  auto locked = impl->state.lockShared();
  return Stats{locked->size,   table.inUse,       table.waiting,  locked->transactions,
               table.timeouts, locked->discarded, table.waitTime, capacity,
               locked->grown,  locked->shrunk};
}

uint32_t SqlPool::leasesHeld(kj::StringPtr plugin) const {
  return impl->leases.heldBy(plugin);
}

SqlPool::Reclaimed SqlPool::reclaim(uint64_t owner) {
  auto report = impl->leases.cancelOwner(owner);
  return Reclaimed{report.waitersCancelled, report.held};
}

}  // namespace payhost::host
