// The SQLite connection payhostd's pools and TestHost share (sdk/src/sql-connection.h), on real
// SQLite files in a temporary directory: settings, parameters, typed rows, the exact messages, and
// runTransaction's commit and rollback.
#include "sdk/src/sql-connection.h"

#include <kj/debug.h>
#include <kj/exception.h>

#include <gtest/gtest.h>

#include <stdlib.h>

#include <filesystem>
#include <string>

namespace payhost::_ {
namespace {

class TemporaryDirectory {
public:
  TemporaryDirectory() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "sql-connection-XXXXXX").string();
    KJ_ASSERT(mkdtemp(pattern.data()) != nullptr, pattern.c_str());
    path = pattern;
  }
  ~TemporaryDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  KJ_DISALLOW_COPY(TemporaryDirectory);

  kj::String file(const char* name) const { return kj::str((path / name).c_str()); }

  std::filesystem::path path;
};

std::string errorOf(kj::Function<void()> func) {
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { func(); })) {
    EXPECT_EQ(e->getType(), kj::Exception::Type::FAILED);
    return e->getDescription().cStr();
  }
  return "(no error)";
}

TEST(SqliteConnection, OpensWithDurableCommitsWalForeignKeysAndABusyTimeout) {
  TemporaryDirectory dir;
  SqliteConnection connection("store", dir.file("store.sqlite"));
  EXPECT_EQ(connection.execute("PRAGMA journal_mode", nullptr).text(0, 0), "wal");
  // 2 is FULL: NORMAL (1) may lose the last commits in WAL mode when the machine stops.
  EXPECT_EQ(connection.execute("PRAGMA synchronous", nullptr).integer(0, 0), 2);
  EXPECT_EQ(connection.execute("PRAGMA foreign_keys", nullptr).integer(0, 0), 1);
  EXPECT_EQ(connection.execute("PRAGMA busy_timeout", nullptr).integer(0, 0), 10000);
  EXPECT_EQ(connection.beginStatement(), "BEGIN IMMEDIATE");
  EXPECT_FALSE(connection.broken());
  EXPECT_TRUE(std::filesystem::exists(dir.path / "store.sqlite"));
}

TEST(SqliteConnection, BindsParametersAndReturnsTypedRows) {
  TemporaryDirectory dir;
  SqliteConnection connection("store", dir.file("store.sqlite"));
  connection.execute("CREATE TABLE t (i BIGINT, r REAL, s TEXT, b BLOB, n TEXT)", nullptr);
  kj::byte raw[] = {0, 7, 255};
  SqlParam params[] = {int64_t{-5}, 2.25, "text", kj::ArrayPtr<const kj::byte>(raw), nullptr};
  auto inserted = connection.execute("INSERT INTO t VALUES ($1, $2, $3, $4, $5)", params);
  EXPECT_EQ(inserted.changes(), 1u);
  EXPECT_EQ(inserted.columnCount(), 0u);

  // Parameters may repeat and come in any order.
  SqlParam where[] = {"text", int64_t{-5}};
  auto rows = connection.execute("SELECT i, r, s, b, n, $2 AS again FROM t WHERE s = $1", where);
  ASSERT_EQ(rows.rowCount(), 1u);
  EXPECT_EQ(rows.changes(), 0u) << "a SELECT changes nothing";
  EXPECT_EQ(rows.columns()[5], "again");
  EXPECT_EQ(rows.integer(0, 0), -5);
  EXPECT_EQ(rows.real(0, 1), 2.25);
  EXPECT_EQ(rows.text(0, 2), "text");
  ASSERT_EQ(rows.blob(0, 3).size(), 3u);
  EXPECT_EQ(rows.blob(0, 3)[2], 255);
  EXPECT_TRUE(rows.isNull(0, 4));
  EXPECT_EQ(rows.integer(0, 5), -5);

  // Several statements: each runs, the last one's rows come back.
  auto last = connection.execute("INSERT INTO t (i) VALUES (1); SELECT count(*) FROM t", nullptr);
  EXPECT_EQ(last.integer(0, 0), 2);
}

TEST(SqliteConnection, MessagesNameTheDatabaseAndTheStatement) {
  TemporaryDirectory dir;
  SqliteConnection connection("store", dir.file("store.sqlite"));
  connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)", nullptr);
  SqlParam one[] = {int64_t{1}};
  EXPECT_EQ(errorOf([&]() { connection.execute("SELECT $2", one); }),
            "database store: parameter $2 has no value (1 given; write them $1..$N) (in: SELECT "
            "$2)");
  EXPECT_EQ(errorOf([&]() { connection.execute("SELECT ?", one); }),
            "database store: parameter ? has no value (1 given; write them $1..$N) (in: SELECT ?)");
  EXPECT_EQ(errorOf([&]() { connection.execute("SELEKT 1", nullptr); }),
            "database store: near \"SELEKT\": syntax error (in: SELEKT 1)");
  connection.execute("INSERT INTO t VALUES ($1)", one);
  EXPECT_EQ(errorOf([&]() { connection.execute("INSERT INTO t VALUES ($1)", one); }),
            "database store: UNIQUE constraint failed: t.id (in: INSERT INTO t VALUES ($1))");
}

TEST(SqliteConnection, RefusesAFileThatCannotOpenOrHaveWal) {
  TemporaryDirectory dir;
  auto missing = dir.file("no-such-dir/store.sqlite");
  EXPECT_EQ(
      errorOf([&]() { SqliteConnection("store", missing); }),
      kj::str("database store: cannot open SQLite file ", missing, ": unable to open database file")
          .cStr());
  // An in-memory database has no WAL. Under ASan this also shows the handle is closed when the
  // constructor throws after opening it.
  EXPECT_EQ(errorOf([&]() { SqliteConnection("store", ":memory:"); }),
            "database store: SQLite file :memory: refused WAL mode");
}

TEST(SqliteConnection, RunTransactionCommitsOrRollsBackAndRethrows) {
  TemporaryDirectory dir;
  SqliteConnection connection("store", dir.file("store.sqlite"));
  connection.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)", nullptr);
  connection.execute(
      "CREATE TABLE child (parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)",
      nullptr);
  auto count = [&](const char* table) {
    return connection.execute(kj::str("SELECT count(*) FROM ", table), nullptr).integer(0, 0);
  };

  runTransaction(connection, [](SqlTransaction& tx) {
    tx.execute("INSERT INTO parent VALUES (1)");
    tx.execute("INSERT INTO child VALUES (1)");
  });
  EXPECT_EQ(count("parent"), 1);
  EXPECT_EQ(count("child"), 1);

  // The work's exception is what comes out, and nothing it wrote stays.
  EXPECT_EQ(errorOf([&]() {
              runTransaction(connection, [](SqlTransaction& tx) {
                tx.execute("INSERT INTO parent VALUES (2)");
                kj::throwFatalException(KJ_EXCEPTION(FAILED, "declined by the test"));
              });
            }),
            "declined by the test");
  EXPECT_EQ(count("parent"), 1);

  // A commit that fails (a deferred foreign key) rolls back and throws the commit's error.
  EXPECT_EQ(errorOf([&]() {
              runTransaction(connection, [](SqlTransaction& tx) {
                tx.execute("INSERT INTO parent VALUES (3)");
                tx.execute("INSERT INTO child VALUES (99)");
              });
            }),
            "database store: FOREIGN KEY constraint failed (in: COMMIT)");
  EXPECT_EQ(count("parent"), 1);
  EXPECT_EQ(count("child"), 1);
  // No transaction is left open: a new one begins.
  runTransaction(connection,
                 [](SqlTransaction& tx) { tx.execute("INSERT INTO parent VALUES (4)"); });
  EXPECT_EQ(count("parent"), 2);
}

// A statement run again is the one kept prepared: its new parameters count, a failure leaves it
// usable, a schema change is seen, and more distinct statements than it keeps still run.
TEST(SqliteConnection, KeptStatementsRunAgainWithNewParametersAfterFailuresAndSchemaChanges) {
  TemporaryDirectory dir;
  SqliteConnection connection("store", dir.file("store.sqlite"));
  connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)", nullptr);
  const kj::StringPtr insert = "INSERT INTO t (id, name) VALUES ($1, $2)";
  for (int64_t id = 1; id <= 3; ++id) {
    auto name = kj::str("n", id);
    const SqlParam params[] = {id, name};
    EXPECT_EQ(connection.execute(insert, params).changes(), 1u);
  }
  // The same text, a duplicate key: fails, and the next run of it works.
  const SqlParam duplicate[] = {int64_t{2}, kj::StringPtr("again")};
  EXPECT_NE(errorOf([&]() {
              connection.execute(insert, duplicate);
            }).find("UNIQUE constraint failed: t.id"),
            std::string::npos);
  const SqlParam fourth[] = {int64_t{4}, kj::StringPtr("n4")};
  EXPECT_EQ(connection.execute(insert, fourth).changes(), 1u);
  const kj::StringPtr select = "SELECT * FROM t WHERE id >= $1 ORDER BY id";
  const SqlParam fromTwo[] = {int64_t{2}};
  auto rows = connection.execute(select, fromTwo);
  ASSERT_EQ(rows.rowCount(), 3u);
  EXPECT_EQ(rows.text(0, 1), "n2");
  EXPECT_EQ(connection.execute(select, {int64_t{4}}).rowCount(), 1u);
  // A column added after the statement was kept: the next run returns it.
  connection.execute("ALTER TABLE t ADD COLUMN note TEXT DEFAULT 'x'", nullptr);
  auto wider = connection.execute(select, fromTwo);
  ASSERT_EQ(wider.columnCount(), 3u);
  EXPECT_EQ(wider.text(2, 2), "x");
  // Many distinct texts (more than are kept), each run twice, all answer right.
  for (int i = 0; i < 300; ++i) {
    auto sql = kj::str("SELECT ", i, " + $1");
    EXPECT_EQ(connection.execute(sql, {int64_t{1}}).integer(0, 0), i + 1);
    EXPECT_EQ(connection.execute(sql, {int64_t{2}}).integer(0, 0), i + 2);
  }
  // Nothing kept holds the file: another connection can take an exclusive lock and checkpoint.
  SqliteConnection other("store", dir.file("store.sqlite"));
  auto checkpoint = other.execute("PRAGMA wal_checkpoint(TRUNCATE)", nullptr);
  EXPECT_EQ(checkpoint.integer(0, 0), 0) << "a kept statement still reads";
  runTransaction(other, [](SqlTransaction& tx) { tx.execute("DELETE FROM t", {}); });
  EXPECT_EQ(connection.execute(select, fromTwo).rowCount(), 0u);
}

}  // namespace
}  // namespace payhost::_
