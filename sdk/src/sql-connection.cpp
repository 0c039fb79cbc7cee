#include "sdk/src/sql-connection.h"

#include <kj/debug.h>
#include <kj/exception.h>
#include <kj/vector.h>

#include <sqlite3.h>

#include <cstdlib>
#include <string>

namespace payhost::_ {

namespace {

// FAILED with `message` as the whole description (KJ_FAIL_REQUIRE would prefix and quote it):
// these messages reach operators and plugin authors, who read them as written.
[[noreturn]] void failWith(kj::String message) {
  kj::throwFatalException(
      kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::mv(message)));
}

class Transaction final : public SqlTransaction {
public:
  explicit Transaction(SqlConnection& connection) : connection(connection) {}
  SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) override {
    return connection.execute(sql, params);
  }

private:
  SqlConnection& connection;
};

}  // namespace

void runTransaction(SqlConnection& connection, kj::FunctionParam<void(SqlTransaction&)> work) {
  Transaction transaction(connection);
  connection.execute(connection.beginStatement(), nullptr);
  KJ_IF_MAYBE (exception, kj::runCatchingExceptions([&]() { work(transaction); })) {
    // The work's exception is what the caller hears, whatever the rollback says.
    kj::runCatchingExceptions([&]() { connection.execute("ROLLBACK", nullptr); });
    kj::throwFatalException(kj::mv(*exception));
  }
  KJ_IF_MAYBE (exception,
               kj::runCatchingExceptions([&]() { connection.execute("COMMIT", nullptr); })) {
    kj::runCatchingExceptions([&]() { connection.execute("ROLLBACK", nullptr); });
    kj::throwFatalException(kj::mv(*exception));
  }
}

SqliteConnection::SqliteConnection(kj::StringPtr database, kj::StringPtr path)
    : database(database) {
  int status = sqlite3_open_v2(
      path.cStr(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (status != SQLITE_OK) {
    auto message = kj::str(db == nullptr ? sqlite3_errstr(status) : sqlite3_errmsg(db));
    sqlite3_close(db);
    db = nullptr;
    failWith(kj::str("database ", database, ": cannot open SQLite file ", path, ": ", message));
  }
  // The destructor does not run when the constructor throws.
  KJ_ON_SCOPE_FAILURE({
    for (auto& entry : statements)
      sqlite3_finalize(entry.second);
    statements.clear();
    sqlite3_close_v2(db);
    db = nullptr;
  });
  sqlite3_busy_timeout(db, 10000);
  auto mode = execute("PRAGMA journal_mode=WAL", nullptr);
  if (mode.rowCount() != 1 || mode.text(0, 0) != "wal") {
    failWith(kj::str("database ", database, ": SQLite file ", path, " refused WAL mode"));
  }
  // FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a
  // payment acknowledged must stay written.
  execute("PRAGMA synchronous=FULL", nullptr);
  execute("PRAGMA foreign_keys=ON", nullptr);
}

SqliteConnection::~SqliteConnection() noexcept(false) {
  for (auto& entry : statements)
    sqlite3_finalize(entry.second);
  sqlite3_close_v2(db);
}

SqlResult SqliteConnection::execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) {
  auto found = statements.find(std::string_view(sql.begin(), sql.size()));
  if (found != statements.end()) return runCached(found->second, sql, params);
  const char* rest = sql.cStr();
  SqlResult last;
  while (*rest != '\0') {
    sqlite3_stmt* statement = nullptr;
    const char* tail = nullptr;
    if (sqlite3_prepare_v3(db, rest, -1, SQLITE_PREPARE_PERSISTENT, &statement, &tail) !=
        SQLITE_OK) {
      fail(sql);
    }
    if (statement == nullptr) {  // only whitespace or a comment
      rest = tail;
      continue;
    }
    if (rest == sql.cStr() && *tail == '\0') {
      // One statement, the common case: kept prepared for the next time (SQLite prepares it
      // again by itself when the schema changed). Plugins run a few fixed statements; text
      // that varies from call to call would only fill the cache, so it is emptied when full.
      if (statements.size() >= MAX_STATEMENTS) {
        for (auto& entry : statements)
          sqlite3_finalize(entry.second);
        statements.clear();
      }
      statements.emplace(std::string(sql.cStr(), sql.size()), statement);
      return runCached(statement, sql, params);
    }
    KJ_DEFER(sqlite3_finalize(statement));
    rest = tail;
    bind(statement, sql, params);
    last = run(statement, sql);
  }
  return last;
}

SqlResult SqliteConnection::runCached(sqlite3_stmt* statement, kj::StringPtr sql,
                                      kj::ArrayPtr<const SqlParam> params) {
  // Ready for its next use whatever happens (a failed step, a missing parameter).
  KJ_DEFER({
    sqlite3_reset(statement);
    sqlite3_clear_bindings(statement);
  });
  bind(statement, sql, params);
  return run(statement, sql);
}

void SqliteConnection::fail(kj::StringPtr sql) {
  failWith(kj::str("database ", database, ": ", sqlite3_errmsg(db), " (in: ", sql, ")"));
}

void SqliteConnection::bind(sqlite3_stmt* statement, kj::StringPtr sql,
                            kj::ArrayPtr<const SqlParam> params) {
  int count = sqlite3_bind_parameter_count(statement);
  for (int i = 1; i <= count; ++i) {
    const char* name = sqlite3_bind_parameter_name(statement, i);
    char* end = nullptr;
    long index = name != nullptr && name[0] == '$' ? strtol(name + 1, &end, 10) : 0;
    if (index < 1 || end == nullptr || *end != '\0' || static_cast<size_t>(index) > params.size()) {
      failWith(kj::str("database ", database, ": parameter ", name == nullptr ? "?" : name,
                       " has no value (", params.size(), " given; write them $1..$N) (in: ", sql,
                       ")"));
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
        status =
            sqlite3_bind_text64(statement, i, reinterpret_cast<const char*>(param.bytes().begin()),
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

SqlResult SqliteConnection::run(sqlite3_stmt* statement, kj::StringPtr sql) {
  kj::Vector<SqlValue> cells;
  int columns = 0;
  for (;;) {
    int status = sqlite3_step(statement);
    // Counted after the first step: a kept statement may just have been prepared again for a
    // changed schema (a `SELECT *` over a table that gained a column).
    columns = sqlite3_column_count(statement);
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

}  // namespace payhost::_
