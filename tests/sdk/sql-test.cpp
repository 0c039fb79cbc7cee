// The SDK's SQL types: SqlResult's typed access and its errors, SqlParam's conversions, and
// Database::transaction / execute over a fake database (what a plugin test gives TestHost).
#include <payhost/sql.h>

#include <kj/async.h>
#include <kj/vector.h>

#include <gtest/gtest.h>

#include <mutex>
#include <set>
#include <string>

namespace payhost {
namespace {

std::string errorOf(kj::Function<void()> func) {
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { func(); })) {
    return e->getDescription().cStr();
  }
  return "(no error)";
}

SqlResult twoRows() {
  auto columns = kj::heapArrayBuilder<kj::String>(2);
  columns.add(kj::str("id"));
  columns.add(kj::str("name"));
  auto cells = kj::heapArrayBuilder<SqlValue>(4);
  SqlValue one;
  one.type = SqlType::INTEGER;
  one.integer = 1;
  cells.add(kj::mv(one));
  cells.add(SqlValue::ofText(kj::StringPtr("ann")));
  SqlValue two;
  two.type = SqlType::REAL;
  two.real = 2.5;
  cells.add(kj::mv(two));
  cells.add(SqlValue());
  return SqlResult(columns.finish(), cells.finish(), 0);
}

TEST(SqlResult, TypedAccessAndClearErrors) {
  auto result = twoRows();
  EXPECT_EQ(result.rowCount(), 2u);
  EXPECT_EQ(result.columnCount(), 2u);
  EXPECT_EQ(result.integer(0, 0), 1);
  EXPECT_EQ(result.real(0, 0), 1.0);
  EXPECT_EQ(result.text(0, 1), "ann");
  EXPECT_EQ(result.real(1, 0), 2.5);
  EXPECT_TRUE(result.isNull(1, 1));
  EXPECT_NE(errorOf([&]() {
              result.integer(1, 0);
            }).find("cell (row 1, column 0 'id') is REAL, not INTEGER"),
            std::string::npos);
  EXPECT_NE(errorOf([&]() {
              result.blob(0, 2);
            }).find("cell (row 0, column 2) is out of range (2 rows, 2 columns)"),
            std::string::npos);
  EXPECT_NE(errorOf([&]() { result.text(1, 1); }).find("is NULL, not TEXT"), std::string::npos);
  SqlResult empty;
  EXPECT_EQ(empty.rowCount(), 0u);
}

TEST(SqlParam, ConvertsFromWhatItCanHold) {
  kj::byte bytes[] = {1, 2};
  kj::String owned = kj::str("owned");
  SqlParam params[] = {nullptr, 7, int64_t(1) << 40, 0.5, "text", owned, kj::arrayPtr(bytes, 2)};
  EXPECT_EQ(params[0].type(), SqlType::NULL_);
  EXPECT_EQ(params[1].integer(), 7);
  EXPECT_EQ(params[2].integer(), int64_t(1) << 40);
  EXPECT_EQ(params[3].real(), 0.5);
  EXPECT_EQ(params[4].type(), SqlType::TEXT);
  EXPECT_EQ(params[5].bytes().size(), 5u);
  EXPECT_EQ(params[6].type(), SqlType::BLOB);
}

// Runs the work at once and records the statements and their parameters.
class FakeDatabase final : public Database, public SqlTransaction {
public:
  kj::StringPtr name() override { return "fake"; }
  SqlDialect dialect() override { return SqlDialect::SQLITE; }
  kj::Promise<void> transactionWork(kj::Function<void(SqlTransaction&)> work) override {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { work(*this); })) {
      ++rollbacks;
      return kj::mv(*e);
    }
    ++commits;
    return kj::READY_NOW;
  }
  SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) override {
    log += std::string(sql.cStr());
    for (auto& param : params) {
      log += " ";
      if (param.type() == SqlType::TEXT) {
        log.append(reinterpret_cast<const char*>(param.bytes().begin()), param.bytes().size());
      } else {
        log += std::to_string(param.integer());
      }
    }
    log += ";";
    return twoRows();
  }
  using SqlTransaction::execute;

  std::string log;
  int commits = 0;
  int rollbacks = 0;
};

TEST(Database, TransactionReturnsWhatTheWorkReturnsAndExecuteCopiesItsInputs) {
  kj::EventLoop loop;
  kj::WaitScope waitScope(loop);
  FakeDatabase db;
  auto name = db.transaction([](SqlTransaction& tx) {
                  return kj::str(tx.execute("SELECT $1", {5}).text(0, 1));
                }).wait(waitScope);
  EXPECT_EQ(name, "ann");
  kj::Promise<SqlResult> pending = nullptr;
  {
    kj::String sql = kj::str("INSERT $1 $2");
    kj::String text = kj::str("copied");
    pending = static_cast<Database&>(db).execute(sql, {text, 9});
  }
  EXPECT_EQ(pending.wait(waitScope).rowCount(), 2u);
  EXPECT_EQ(db.log, "SELECT $1 5;INSERT $1 $2 copied 9;");
  EXPECT_EQ(db.commits, 2);
  auto failed = db.transaction([](SqlTransaction&) { KJ_FAIL_REQUIRE("no"); })
                    .then([]() { return false; }, [](kj::Exception&&) { return true; })
                    .wait(waitScope);
  EXPECT_TRUE(failed);
  EXPECT_EQ(db.rollbacks, 1);
}

// Knows which of its instances are alive, so work that runs on a copy can tell from work that
// runs on an object already destroyed (without reading the dead object's memory).
class Probe {
public:
  Probe() { enter(); }
  Probe(const Probe&) { enter(); }
  Probe& operator=(const Probe&) = default;
  ~Probe() {
    std::lock_guard<std::mutex> lock(mutex());
    live().erase(this);
  }
  bool alive() const {
    std::lock_guard<std::mutex> lock(mutex());
    return live().count(this) == 1;
  }

private:
  void enter() {
    std::lock_guard<std::mutex> lock(mutex());
    live().insert(this);
  }
  static std::set<const Probe*>& live() {
    static std::set<const Probe*> set;
    return set;
  }
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
};

// Keeps the work to run it later, as the host's worker pool does after the caller returned.
class DeferredDatabase final : public Database, public SqlTransaction {
public:
  kj::StringPtr name() override { return "deferred"; }
  SqlDialect dialect() override { return SqlDialect::SQLITE; }
  kj::Promise<void> transactionWork(kj::Function<void(SqlTransaction&)> work) override {
    saved.add(kj::mv(work));
    return kj::READY_NOW;
  }
  SqlResult execute(kj::StringPtr, kj::ArrayPtr<const SqlParam>) override { return {}; }
  using SqlTransaction::execute;

  kj::Vector<kj::Function<void(SqlTransaction&)>> saved;
};

// The ledger's schema creation passed a named lambda (an lvalue) and returned; kj::Function made
// from an lvalue only refers to it, so the worker ran a destroyed lambda (ASan: use after free).
TEST(Database, TransactionKeepsItsOwnCopyOfWorkPassedByName) {
  DeferredDatabase db;
  int ranAlive = 0;
  int ranDead = 0;
  {
    auto work = [probe = Probe(), &ranAlive, &ranDead](SqlTransaction&) {
      ++(probe.alive() ? ranAlive : ranDead);
    };
    db.transaction(work);
    const auto& constWork = work;
    db.transaction(constWork);
  }
  ASSERT_EQ(db.saved.size(), 2u);
  for (auto& work : db.saved)
    work(db);
  EXPECT_EQ(ranAlive, 2);
  EXPECT_EQ(ranDead, 0);
}

}  // namespace
}  // namespace payhost
