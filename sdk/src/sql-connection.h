// One database connection as payhostd's pools (host/pools/sql-pool.cpp) and the SDK's TestHost
// (`TestHost::sqliteDatabase`) hold it, and the SQLite one both use, so that a plugin's unit
// tests get exactly payhostd's SQLite settings, parameter rules, rows and error messages.
//
// Internal: not an installed header; included as "sdk/src/sql-connection.h". Built into the
// static library payhost-sdk-sql-connection (hidden symbols), which payhost-sdk-testing and the
// host's pools link privately.
//
// Threads: a connection is used by one thread at a time; it may move between threads.

#pragma once

#include <payhost/sql.h>

#include <kj/array.h>
#include <kj/function.h>
#include <kj/string.h>

#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>

struct sqlite3;
struct sqlite3_stmt;

namespace payhost::_ {  // private

// An open connection to a database, in one dialect.
class SqlConnection {
public:
  virtual ~SqlConnection() noexcept(false) = default;

  // Runs `sql` (SQLite: each of its `;`-separated statements in turn) with `params` bound to
  // `$1..$N`; returns the last statement's rows. Throws FAILED with the database's message.
  virtual SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) = 0;
  // The statement that opens a transaction in this dialect.
  virtual kj::StringPtr beginStatement() = 0;
  // Whether the connection can no longer be used (a pool then discards it).
  virtual bool broken() = 0;
};

// Runs `work` in one transaction on `connection`: begins, runs it, commits. When `work` or the
// commit throws, rolls back (a failed rollback is ignored) and rethrows what `work` or the commit
// threw; a failed begin throws as it is.
void runTransaction(SqlConnection& connection, kj::FunctionParam<void(SqlTransaction&)> work);

// A SQLite file opened with payhostd's settings: WAL (refused otherwise), synchronous=FULL (a
// commit is on disk when it returns), foreign keys on, a 10 s busy timeout. Transactions begin
// IMMEDIATE. Parameters are named `$1..$N`; one without a value is an error.
//
// Messages (FAILED, description exactly as written): "database NAME: cannot open SQLite file
// PATH: ...", "database NAME: SQLite file PATH refused WAL mode", "database NAME: <SQLite's
// message> (in: SQL)", "database NAME: parameter $K has no value (N given; write them $1..$N)
// (in: SQL)". `database` is borrowed and must outlive the connection. A single statement stays
// prepared, by its text, for the next call that runs the same text.
class SqliteConnection final : public SqlConnection {
public:
  // Creates the file when it does not exist. Throws when it cannot be opened or refuses WAL.
  SqliteConnection(kj::StringPtr database, kj::StringPtr path);
  ~SqliteConnection() noexcept(false) override;
  KJ_DISALLOW_COPY(SqliteConnection);

  SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) override;
  kj::StringPtr beginStatement() override { return "BEGIN IMMEDIATE"; }
  // A SQLite file does not break the way a network connection does: always false.
  bool broken() override { return false; }

private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
  };
  // Prepared statements kept by their SQL text, at most this many (then all are dropped).
  static constexpr size_t MAX_STATEMENTS = 128;

  kj::StringPtr database;
  sqlite3* db = nullptr;
  std::unordered_map<std::string, sqlite3_stmt*, StringHash, std::equal_to<>> statements;

  [[noreturn]] void fail(kj::StringPtr sql);
  void bind(sqlite3_stmt* statement, kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params);
  SqlResult run(sqlite3_stmt* statement, kj::StringPtr sql);
  SqlResult runCached(sqlite3_stmt* statement, kj::StringPtr sql,
                      kj::ArrayPtr<const SqlParam> params);
};

}  // namespace payhost::_
