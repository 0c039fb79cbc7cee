// Databases a plugin uses through `Context::sql(name)`: one interface over the host's pooled
// SQLite (the embedded default) and PostgreSQL (when hosts share state) connections.
//
// Statements are run inside a transaction on a pooled connection, on the host's worker pool
// (never on an event loop):
//
//   ctx.sql("ledger").transaction([id, amount](payhost::SqlTransaction& tx) {
//     tx.execute("INSERT INTO entries (id, amount) VALUES ($1, $2)", {id, amount});
//     return tx.execute("SELECT count(*) FROM entries").integer(0, 0);
//   }).then([](int64_t count) { ... });
//
// Parameters are written `$1..$N` in both dialects.
//
// Lifetimes: a `Database` outlives the plugin instance that got it. A `SqlTransaction` is valid
// only inside the function given to `transaction`. A `SqlParam` is a view: what it points to must
// outlive the `execute` call. A `SqlResult` owns its rows and may be moved anywhere.
//
// Threads: `Database` methods are called on the instance's shard; the function given to
// `transaction` runs on a worker thread, so it must not touch the shard's objects, and what it
// captures must stay valid until the promise settles (move it in).

#ifndef PAYHOST_SQL_H_
#define PAYHOST_SQL_H_

#include <kj/array.h>
#include <kj/async.h>
#include <kj/debug.h>
#include <kj/exception.h>
#include <kj/function.h>
#include <kj/refcount.h>
#include <kj/string.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

namespace payhost {

enum class SqlType : uint8_t { NULL_, INTEGER, REAL, TEXT, BLOB };

// A view of one statement parameter. Implicit from the types it can hold.
class SqlParam {
public:
  SqlParam(decltype(nullptr)) : type_(SqlType::NULL_) {}
  SqlParam(int64_t value) : type_(SqlType::INTEGER), integer_(value) {}
  SqlParam(int value) : type_(SqlType::INTEGER), integer_(value) {}
  SqlParam(uint32_t value) : type_(SqlType::INTEGER), integer_(value) {}
  SqlParam(double value) : type_(SqlType::REAL), real_(value) {}
  SqlParam(kj::StringPtr value) : type_(SqlType::TEXT), bytes_(value.asBytes()) {}
  SqlParam(const char* value) : SqlParam(kj::StringPtr(value)) {}
  SqlParam(const kj::String& value) : SqlParam(value.asPtr()) {}
  SqlParam(kj::ArrayPtr<const kj::byte> value) : type_(SqlType::BLOB), bytes_(value) {}
  SqlParam(kj::ArrayPtr<kj::byte> value) : SqlParam(value.asConst()) {}
  SqlParam(const kj::Array<kj::byte>& value) : SqlParam(value.asPtr()) {}
  SqlParam(const kj::Array<const kj::byte>& value) : SqlParam(value.asPtr()) {}

  SqlType type() const { return type_; }
  int64_t integer() const { return integer_; }
  double real() const { return real_; }
  // TEXT (not NUL-terminated) or BLOB bytes.
  kj::ArrayPtr<const kj::byte> bytes() const { return bytes_; }

private:
  SqlType type_;
  int64_t integer_ = 0;
  double real_ = 0;
  kj::ArrayPtr<const kj::byte> bytes_;
};

// One cell of a result, owned.
struct SqlValue {
  SqlType type = SqlType::NULL_;
  int64_t integer = 0;
  double real = 0;
  // TEXT: the characters followed by a NUL; BLOB: the bytes.
  kj::Array<kj::byte> bytes;

  static SqlValue ofText(kj::ArrayPtr<const char> text);
};

// The rows a statement returned, owned. Typed access throws FAILED naming the row, column and
// types when the index is out of range or the cell holds another type (a NULL cell is only
// `isNull`). `real` also reads an INTEGER cell.
class SqlResult {
public:
  SqlResult() = default;
  // `cells` holds `columns.size()` cells per row, row after row.
  SqlResult(kj::Array<kj::String> columns, kj::Array<SqlValue> cells, uint64_t changes);

  kj::ArrayPtr<const kj::String> columns() const { return columns_; }
  size_t columnCount() const { return columns_.size(); }
  size_t rowCount() const;
  // Rows inserted, updated or deleted by the statement.
  uint64_t changes() const { return changes_; }

  bool isNull(size_t row, size_t column) const;
  int64_t integer(size_t row, size_t column) const;
  double real(size_t row, size_t column) const;
  kj::StringPtr text(size_t row, size_t column) const KJ_LIFETIMEBOUND;
  kj::ArrayPtr<const kj::byte> blob(size_t row, size_t column) const KJ_LIFETIMEBOUND;
  // The cell, for any type.
  const SqlValue& cell(size_t row, size_t column) const KJ_LIFETIMEBOUND;

private:
  kj::Array<kj::String> columns_;
  kj::Array<SqlValue> cells_;
  uint64_t changes_ = 0;

  const SqlValue& typed(size_t row, size_t column, SqlType type) const;
};

enum class SqlDialect : uint8_t { SQLITE, POSTGRESQL };

// Whether `exception` is a transaction the database aborted because it conflicted with a
// concurrent one: PostgreSQL's deadlock_detected (SQLSTATE 40P01) or serialization_failure
// (40001). The host throws these OVERLOADED, with "(SQLSTATE 40P01)" or "(SQLSTATE 40001)" in
// the description. Nothing of the transaction was applied, so running it again is safe and
// usually succeeds; GroupCommit does so itself. SQLite never raises them (its writers queue).
inline bool isTransactionConflict(const kj::Exception& exception) {
  if (exception.getType() != kj::Exception::Type::OVERLOADED) return false;
  const char* text = exception.getDescription().cStr();
  return strstr(text, "(SQLSTATE 40P01)") != nullptr || strstr(text, "(SQLSTATE 40001)") != nullptr;
}

// Statements inside one transaction. Valid only inside the function given to
// `Database::transaction`, on the worker thread running it.
class SqlTransaction {
public:
  virtual ~SqlTransaction() noexcept(false) = default;

  // Runs one statement with `params` bound to `$1..$N`. Throws FAILED with the database's
  // message (e.g. a unique constraint violation) when it fails; the transaction is then rolled
  // back when the function returns or throws. A statement the database aborted to let a
  // concurrent transaction through (a deadlock, a serialization failure) throws OVERLOADED
  // instead: see isTransactionConflict().
  virtual SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) = 0;

  SqlResult execute(kj::StringPtr sql, std::initializer_list<SqlParam> params = {}) {
    return execute(sql, kj::arrayPtr(params.begin(), params.size()));
  }
};

namespace _ {  // private
// One result crossing from a worker thread to the shard.
template <typename Result>
struct ResultSlot final : public kj::AtomicRefcounted {
  mutable kj::Maybe<Result> value;
};
}  // namespace _

class Database {
public:
  virtual ~Database() noexcept(false) = default;

  // The pool's name in the host's config (`[databases.NAME]`).
  virtual kj::StringPtr name() = 0;
  virtual SqlDialect dialect() = 0;

  // Runs `work(SqlTransaction&)` in one transaction on a pooled connection, on the worker pool,
  // and resolves on this shard with what it returns once the commit is durable; if it throws, the
  // transaction is rolled back and the promise rejects with what it threw. While it runs it holds
  // one connection lease of the plugin's quota for this database; when that is used up it waits
  // up to the pool's `lease_wait_ms`, then fails with OVERLOADED naming the plugin and the pool.
  template <typename Func>
  kj::Promise<std::invoke_result_t<Func&, SqlTransaction&>> transaction(Func&& work);

  // One statement in its own transaction. Copies `sql` and `params`.
  kj::Promise<SqlResult> execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params);
  kj::Promise<SqlResult> execute(kj::StringPtr sql, std::initializer_list<SqlParam> params = {}) {
    return execute(sql, kj::arrayPtr(params.begin(), params.size()));
  }

  // What `transaction` is built on.
  virtual kj::Promise<void> transactionWork(kj::Function<void(SqlTransaction&)> work) = 0;
};

template <typename Func>
kj::Promise<std::invoke_result_t<Func&, SqlTransaction&>> Database::transaction(Func&& work) {
  using Result = std::invoke_result_t<Func&, SqlTransaction&>;
  if constexpr (std::is_void_v<Result>) {
    // A copy (or move), never a reference: kj::Function made from an lvalue would only refer to
    // it, and the worker may run `work` after the caller's object is gone.
    return transactionWork(std::decay_t<Func>(kj::fwd<Func>(work)));
  } else {
    // Written on the worker thread, read here after the promise resolves. Shared, because a
    // caller that cancels the promise must not free it under a worker still running `work`.
    auto slot = kj::atomicRefcounted<_::ResultSlot<Result>>();
    return transactionWork([held = kj::atomicAddRef(*slot), work = kj::fwd<Func>(work)](
                               SqlTransaction& tx) mutable { held->value = work(tx); })
        .then([slot = kj::mv(slot)]() mutable { return kj::mv(KJ_ASSERT_NONNULL(slot->value)); });
  }
}

}  // namespace payhost

#endif  // PAYHOST_SQL_H_
