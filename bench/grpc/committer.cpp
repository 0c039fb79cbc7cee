#include "bench/grpc/committer.h"

#include <sqlite3.h>

#include <cstdlib>

namespace payhost::bench {

class SqliteConnection::Transaction final : public SqlTransaction {
public:
  explicit Transaction(SqliteConnection& connection) : connection(connection) {}
  SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) override {
    return connection.execute(sql, params);
  }

private:
  SqliteConnection& connection;
};

SqliteConnection::SqliteConnection(kj::StringPtr path) : path(kj::str(path)) {
  int status = sqlite3_open_v2(
      path.cStr(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (status != SQLITE_OK) {
    auto message = kj::str(db == nullptr ? sqlite3_errstr(status) : sqlite3_errmsg(db));
    sqlite3_close(db);
    db = nullptr;
    KJ_FAIL_REQUIRE("cannot open SQLite file", path, message);
  }
  sqlite3_busy_timeout(db, 10000);
  auto mode = execute("PRAGMA journal_mode=WAL", nullptr);
  KJ_REQUIRE(mode.rowCount() == 1 && mode.text(0, 0) == "wal", "SQLite refused WAL mode", path);
  execute("PRAGMA synchronous=FULL", nullptr);
  execute("PRAGMA foreign_keys=ON", nullptr);
}

SqliteConnection::~SqliteConnection() noexcept(false) {
  sqlite3_close_v2(db);
}

void SqliteConnection::transaction(kj::FunctionParam<void(SqlTransaction&)> work) {
  execute("BEGIN IMMEDIATE", nullptr);
  auto failure = kj::runCatchingExceptions([&]() {
    Transaction tx(*this);
    work(tx);
    execute("COMMIT", nullptr);
  });
  KJ_IF_MAYBE (e, failure) {
    if (sqlite3_get_autocommit(db) == 0) execute("ROLLBACK", nullptr);
    kj::throwFatalException(kj::mv(*e));
  }
}

SqlResult SqliteConnection::execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) {
  auto fail = [&]() {
    kj::throwFatalException(KJ_EXCEPTION(FAILED, "SQLite", path, sqlite3_errmsg(db), sql));
  };
  const char* rest = sql.cStr();
  SqlResult last;
  while (*rest != '\0') {
    sqlite3_stmt* statement = nullptr;
    const char* tail = nullptr;
    if (sqlite3_prepare_v2(db, rest, -1, &statement, &tail) != SQLITE_OK) fail();
    KJ_DEFER(sqlite3_finalize(statement));
    rest = tail;
    if (statement == nullptr) continue;
    int count = sqlite3_bind_parameter_count(statement);
    for (int i = 1; i <= count; ++i) {
      const char* name = sqlite3_bind_parameter_name(statement, i);
      long index = name != nullptr && name[0] == '$' ? strtol(name + 1, nullptr, 10) : 0;
      if (index < 1 || static_cast<size_t>(index) > params.size()) {
        kj::throwFatalException(KJ_EXCEPTION(FAILED, "a statement parameter has no value", sql));
      }
      auto& param = params[index - 1];
      int bound = SQLITE_OK;
      switch (param.type()) {
        case SqlType::NULL_:
          bound = sqlite3_bind_null(statement, i);
          break;
        case SqlType::INTEGER:
          bound = sqlite3_bind_int64(statement, i, param.integer());
          break;
        case SqlType::REAL:
          bound = sqlite3_bind_double(statement, i, param.real());
          break;
        case SqlType::TEXT:
          bound = sqlite3_bind_text64(statement, i,
                                      reinterpret_cast<const char*>(param.bytes().begin()),
                                      param.bytes().size(), SQLITE_TRANSIENT, SQLITE_UTF8);
          break;
        case SqlType::BLOB:
          bound = sqlite3_bind_blob64(statement, i, param.bytes().begin(), param.bytes().size(),
                                      SQLITE_TRANSIENT);
          break;
      }
      if (bound != SQLITE_OK) fail();
    }
    int columns = sqlite3_column_count(statement);
    kj::Vector<SqlValue> cells;
    for (;;) {
      int status = sqlite3_step(statement);
      if (status == SQLITE_DONE) break;
      if (status != SQLITE_ROW) fail();
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
          case SQLITE_TEXT:
            value = SqlValue::ofText(
                kj::arrayPtr(reinterpret_cast<const char*>(sqlite3_column_text(statement, c)),
                             sqlite3_column_bytes(statement, c)));
            break;
          case SQLITE_BLOB:
            value.type = SqlType::BLOB;
            value.bytes =
                kj::heapArray(static_cast<const kj::byte*>(sqlite3_column_blob(statement, c)),
                              sqlite3_column_bytes(statement, c));
            break;
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
    last = SqlResult(names.finish(), cells.releaseAsArray(), changes);
  }
  return last;
}

}  // namespace payhost::bench
