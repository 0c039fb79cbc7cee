#include "host/pools/sql-pool.h"

#include "host/pools/worker-pool.h"
#include "host/util/errors.h"

#include <kj/debug.h>
#include <kj/mutex.h>
#include <kj/vector.h>

#include <libpq-fe.h>
#include <sqlite3.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <string>

namespace payhost::host {

namespace {

// One open connection; used by one thread at a time.
class Connection {
public:
  virtual ~Connection() noexcept(false) = default;
  virtual SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) = 0;
  virtual kj::StringPtr beginStatement() = 0;
  // Whether the connection can no longer be used (it is then discarded).
  virtual bool broken() = 0;
};

class SqliteConnection final : public Connection {
public:
  SqliteConnection(kj::StringPtr pool, kj::StringPtr path) : pool(pool) {
    int status =
        sqlite3_open_v2(path.cStr(), &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (status != SQLITE_OK) {
      auto message = kj::str(db == nullptr ? sqlite3_errstr(status) : sqlite3_errmsg(db));
      sqlite3_close(db);
      db = nullptr;
      PAYHOST_FAIL(FAILED, "database ", pool, ": cannot open SQLite file ", path, ": ", message);
    }
    sqlite3_busy_timeout(db, 10000);
    auto mode = execute("PRAGMA journal_mode=WAL", nullptr);
    if (mode.rowCount() != 1 || mode.text(0, 0) != "wal") {
      PAYHOST_FAIL(FAILED, "database ", pool, ": SQLite file ", path, " refused WAL mode");
    }
    execute("PRAGMA synchronous=FULL", nullptr);
    execute("PRAGMA foreign_keys=ON", nullptr);
  }
  ~SqliteConnection() noexcept(false) { sqlite3_close_v2(db); }
  KJ_DISALLOW_COPY(SqliteConnection);

  kj::StringPtr beginStatement() override { return "BEGIN IMMEDIATE"; }
  bool broken() override { return false; }

  SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) override {
    const char* rest = sql.cStr();
    SqlResult last;
    while (*rest != '\0') {
      sqlite3_stmt* statement = nullptr;
      const char* tail = nullptr;
      if (sqlite3_prepare_v2(db, rest, -1, &statement, &tail) != SQLITE_OK) fail(sql);
      KJ_DEFER(sqlite3_finalize(statement));
      rest = tail;
      if (statement == nullptr) continue;  // only whitespace or a comment
      bind(statement, sql, params);
      last = run(statement, sql);
    }
    return last;
  }

private:
  kj::StringPtr pool;
  sqlite3* db = nullptr;

  [[noreturn]] void fail(kj::StringPtr sql) {
    PAYHOST_FAIL(FAILED, "database ", pool, ": ", sqlite3_errmsg(db), " (in: ", sql, ")");
  }

  void bind(sqlite3_stmt* statement, kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) {
    int count = sqlite3_bind_parameter_count(statement);
    for (int i = 1; i <= count; ++i) {
      const char* name = sqlite3_bind_parameter_name(statement, i);
      char* end = nullptr;
      long index = name != nullptr && name[0] == '$' ? strtol(name + 1, &end, 10) : 0;
      if (index < 1 || end == nullptr || *end != '\0' ||
          static_cast<size_t>(index) > params.size()) {
        PAYHOST_FAIL(FAILED, "database ", pool, ": parameter ", name == nullptr ? "?" : name,
                     " has no value (", params.size(), " given; write them $1..$N) (in: ", sql,
                     ")");
      }
      auto& param = params[index - 1];
      int status = SQLITE_OK;
      switch (param.type()) {
        case SqlType::NULL_:
          status = sqlite3_bind_null(statement, i);
          break;
        case SqlType::INTEGER:
          status = sqlite3_bind_int64(statement, i, param.integer());
          break;
        case SqlType::REAL:
          status = sqlite3_bind_double(statement, i, param.real());
          break;
        case SqlType::TEXT:
          status = sqlite3_bind_text64(statement, i,
                                       reinterpret_cast<const char*>(param.bytes().begin()),
                                       param.bytes().size(), SQLITE_TRANSIENT, SQLITE_UTF8);
          break;
        case SqlType::BLOB:
          status = sqlite3_bind_blob64(statement, i, param.bytes().begin(), param.bytes().size(),
                                       SQLITE_TRANSIENT);
          break;
      }
      if (status != SQLITE_OK) fail(sql);
    }
  }

  SqlResult run(sqlite3_stmt* statement, kj::StringPtr sql) {
    int columns = sqlite3_column_count(statement);
    kj::Vector<SqlValue> cells;
    for (;;) {
      int status = sqlite3_step(statement);
      if (status == SQLITE_DONE) break;
      if (status != SQLITE_ROW) fail(sql);
      for (int c = 0; c < columns; ++c) {
        SqlValue value;
        switch (sqlite3_column_type(statement, c)) {
          case SQLITE_INTEGER:
            value.type = SqlType::INTEGER;
            value.integer = sqlite3_column_int64(statement, c);
            break;
          case SQLITE_FLOAT:
            value.type = SqlType::REAL;
            value.real = sqlite3_column_double(statement, c);
            break;
          case SQLITE_TEXT: {
            auto text = reinterpret_cast<const char*>(sqlite3_column_text(statement, c));
            value = SqlValue::ofText(kj::arrayPtr(text, sqlite3_column_bytes(statement, c)));
            break;
          }
          case SQLITE_BLOB: {
            auto bytes = static_cast<const kj::byte*>(sqlite3_column_blob(statement, c));
            value.type = SqlType::BLOB;
            value.bytes = kj::heapArray(bytes, sqlite3_column_bytes(statement, c));
            break;
          }
          default:
            break;
        }
        cells.add(kj::mv(value));
      }
    }
    auto names = kj::heapArrayBuilder<kj::String>(columns);
    for (int c = 0; c < columns; ++c)
      names.add(kj::str(sqlite3_column_name(statement, c)));
    uint64_t changes = sqlite3_stmt_readonly(statement) ? 0 : sqlite3_changes64(db);
    return SqlResult(names.finish(), cells.releaseAsArray(), changes);
  }
};

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
  ~PostgresConnection() noexcept(false) { PQfinish(conn); }
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

struct Quota {
  uint32_t reserve = 0;
  uint32_t limit = 0;  // 0: the capacity
  uint32_t inUse = 0;
};

// One place in line. Its flags are guarded by the pool's lock.
struct Ticket : public kj::AtomicRefcounted {
  std::string plugin;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> fulfiller;
  bool granted = false;
  bool consumed = false;
};

struct Waiter {
  std::string plugin;
  kj::Own<Ticket> ticket;
};

class Transaction final : public SqlTransaction {
public:
  explicit Transaction(Connection& connection) : connection(connection) {}
  SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) override {
    return connection.execute(sql, params);
  }

private:
  Connection& connection;
};

}  // namespace

class SqlPool::Impl {
public:
  Impl(Options options, WorkerPool& workers, LogSink& log)
      : options(kj::mv(options)), workers(workers), log(log) {
    KJ_REQUIRE(this->options.maxConnections >= 1 &&
                   this->options.minConnections <= this->options.maxConnections,
               "database pool bounds must satisfy min <= max, 1 <= max",
               this->options.minConnections, this->options.maxConnections);
    auto locked = state.lockExclusive();
    for (uint32_t i = 0; i < this->options.minConnections; ++i) {
      locked->idle.add(open());
      ++locked->size;
    }
  }

  struct State {
    std::map<std::string, Quota> quotas;
    std::list<Waiter> waiters;
    kj::Vector<kj::Own<Connection>> idle;
    uint32_t size = 0;
    uint32_t totalInUse = 0;
    uint64_t transactions = 0;
    uint64_t timeouts = 0;
    uint64_t discarded = 0;
    kj::Duration waitTime = 0 * kj::NANOSECONDS;
  };

  Options options;
  WorkerPool& workers;
  LogSink& log;
  kj::MutexGuarded<State> state;

  kj::Own<Connection> open() {
    if (options.dialect == SqlDialect::SQLITE) {
      return kj::heap<SqliteConnection>(options.name, options.target);
    }
    return kj::heap<PostgresConnection>(options.name, options.target);
  }

  kj::Promise<void> transaction(kj::StringPtr plugin, kj::Timer& timer,
                                kj::Function<void(SqlTransaction&)> work) {
    auto name = std::string(plugin.cStr());
    auto started = std::chrono::steady_clock::now();
    return acquire(name, timer).then([this, name, started, &timer, work = kj::mv(work)]() mutable {
      auto waited = std::chrono::steady_clock::now() - started;
      state.lockExclusive()->waitTime +=
          std::chrono::duration_cast<std::chrono::nanoseconds>(waited).count() * kj::NANOSECONDS;
      // Given back when the worker's function goes (after it ran, or if it never runs).
      auto lease = kj::defer([this, name]() { release(*state.lockExclusive(), name); });
      return workers.run(name, timer, [this, work = kj::mv(work), lease = kj::mv(lease)]() mutable {
        runOnWorker(work);
      });
    });
  }

  void runOnWorker(kj::Function<void(SqlTransaction&)>& work) {
    kj::Maybe<kj::Own<Connection>> taken;
    {
      auto locked = state.lockExclusive();
      if (!locked->idle.empty()) {
        taken = kj::mv(locked->idle.back());
        locked->idle.removeLast();
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
      if (connection->broken()) {
        --locked->size;
        ++locked->discarded;
        LogField fields[] = {{"pool", options.name}, {"reason", "connection broken"}};
        log.write(LogLevel::WARNING, "pool.connection_discarded", nullptr, fields);
        auto gone = kj::mv(connection);
      } else {
        locked->idle.add(kj::mv(connection));
      }
    });
    Transaction transaction(*connection);
    connection->execute(connection->beginStatement(), nullptr);
    KJ_IF_MAYBE (exception, kj::runCatchingExceptions([&]() { work(transaction); })) {
      // The plugin's exception is what the caller hears, whatever the rollback says.
      kj::runCatchingExceptions([&]() { connection->execute("ROLLBACK", nullptr); });
      kj::throwFatalException(kj::mv(*exception));
    }
    KJ_IF_MAYBE (exception,
                 kj::runCatchingExceptions([&]() { connection->execute("COMMIT", nullptr); })) {
      kj::runCatchingExceptions([&]() { connection->execute("ROLLBACK", nullptr); });
      kj::throwFatalException(kj::mv(*exception));
    }
  }

  void setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit) {
    auto locked = state.lockExclusive();
    uint32_t reserved = reserve;
    for (auto& [name, quota] : locked->quotas) {
      if (name != plugin.cStr()) reserved += quota.reserve;
    }
    if (reserved > options.maxConnections) {
      PAYHOST_FAIL(FAILED, "database ", options.name, ": reservations (", reserved,
                   ") exceed its capacity (", options.maxConnections, " connections) with plugin ",
                   plugin);
    }
    if (limit != 0 && limit < reserve) {
      PAYHOST_FAIL(FAILED, "database ", options.name, ": plugin ", plugin, "'s limit (", limit,
                   ") is below its reservation (", reserve, ")");
    }
    auto& quota = locked->quotas[std::string(plugin.cStr())];
    quota.reserve = reserve;
    quota.limit = limit;
  }

  bool mayTake(State& s, const std::string& plugin) {
    auto& quota = s.quotas[plugin];
    uint32_t limit = quota.limit == 0 ? options.maxConnections : quota.limit;
    if (quota.inUse >= limit) return false;
    if (quota.inUse < quota.reserve) return true;
    uint32_t heldBack = 0;
    for (auto& [name, other] : s.quotas) {
      if (other.inUse < other.reserve) heldBack += other.reserve - other.inUse;
    }
    return s.totalInUse + heldBack < options.maxConnections;
  }

  void take(State& s, const std::string& plugin) {
    ++s.quotas[plugin].inUse;
    ++s.totalInUse;
  }

  void release(State& s, const std::string& plugin) {
    --s.quotas[plugin].inUse;
    --s.totalInUse;
    for (auto it = s.waiters.begin(); it != s.waiters.end();) {
      if (mayTake(s, it->plugin)) {
        take(s, it->plugin);
        it->ticket->granted = true;
        it->ticket->fulfiller->fulfill();
        it = s.waiters.erase(it);
      } else {
        ++it;
      }
    }
  }

  kj::Promise<void> acquire(const std::string& plugin, kj::Timer& timer) {
    auto locked = state.lockExclusive();
    bool queued = false;
    for (auto& waiter : locked->waiters)
      queued = queued || waiter.plugin == plugin;
    if (!queued && mayTake(*locked, plugin)) {
      take(*locked, plugin);
      return kj::READY_NOW;
    }
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    auto& quota = locked->quotas[plugin];
    auto inUse = quota.inUse;
    auto limit = quota.limit == 0 ? options.maxConnections : quota.limit;
    auto ticket = kj::atomicRefcounted<Ticket>();
    ticket->plugin = plugin;
    ticket->fulfiller = kj::mv(paf.fulfiller);
    locked->waiters.push_back(Waiter{plugin, kj::atomicAddRef(*ticket)});
    auto leave = kj::defer([this, ticket = kj::atomicAddRef(*ticket)]() {
      auto relocked = state.lockExclusive();
      if (!ticket->granted) {
        relocked->waiters.remove_if(
            [&](const Waiter& w) { return w.ticket.get() == ticket.get(); });
      } else if (!ticket->consumed) {
        release(*relocked, ticket->plugin);
      }
    });
    auto wait = options.leaseWait;
    return paf.promise
        .then([this, ticket = kj::mv(ticket)]() mutable {
          auto relocked = state.lockExclusive();
          ticket->consumed = true;
        })
        .attach(kj::mv(leave))
        .exclusiveJoin(timer.afterDelay(wait).then([this, plugin, inUse, limit,
                                                    wait]() -> kj::Promise<void> {
          state.lockExclusive()->timeouts++;
          return KJ_EXCEPTION(
              OVERLOADED, kj::str("plugin ", plugin.c_str(), ": database pool ", options.name,
                                  " quota exhausted (", inUse, " of ", limit,
                                  " connections in use); waited ", wait / kj::MILLISECONDS, " ms"));
        }));
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
  impl->setQuota(plugin, reserve, limit);
}

kj::Promise<void> SqlPool::transaction(kj::StringPtr plugin, kj::Timer& timer,
                                       kj::Function<void(SqlTransaction&)> work) {
  return impl->transaction(plugin, timer, kj::mv(work));
}

SqlPool::Stats SqlPool::stats() const {
  auto locked = impl->state.lockShared();
  return Stats{
      locked->size,         locked->totalInUse, static_cast<uint32_t>(locked->waiters.size()),
      locked->transactions, locked->timeouts,   locked->discarded,
      locked->waitTime};
}

uint32_t SqlPool::leasesHeld(kj::StringPtr plugin) const {
  auto locked = impl->state.lockShared();
  auto it = locked->quotas.find(std::string(plugin.cStr()));
  return it == locked->quotas.end() ? 0 : it->second.inUse;
}

}  // namespace payhost::host
