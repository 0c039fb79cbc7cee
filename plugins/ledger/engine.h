// The ledger's rules over a database transaction: double-entry accounts, one ledger per currency,
// single- and two-phase transfers, balance limits, idempotent transfer ids, expiry, and an audit
// that replays the transfer log. No Cap'n Proto here: ledger.cpp is the glue, and tests drive
// these functions through a real database.
//
// Everything here runs inside one `SqlTransaction` on a worker thread, reads what it needs from
// the database (nothing is cached between transactions, so several shards and hosts may share one
// database), and returns business refusals as values. It throws only on database errors, which
// roll the whole transaction back.

#pragma once

#include <payhost/sql.h>

#include <kj/array.h>
#include <kj/string.h>

#include <cstdint>

namespace payhost::plugins::ledger {

// Stored in the transfers table; never renumber.
enum class Kind : uint8_t {
  POSTED = 1,
  PENDING = 2,
  POST_PENDING = 3,
  VOID_PENDING = 4,
  EXPIRE_PENDING = 5,
};

enum class Reject : uint8_t {
  INVALID_REQUEST,
  IDEMPOTENCY_CONFLICT,
  INVALID_STATE,
  UNKNOWN_TRANSACTION,
  EXCEEDS_LIMIT,
  CURRENCY_MISMATCH,
};

kj::StringPtr nameOf(Reject code);

struct Flags {
  bool debitsMustNotExceedCredits = false;
  bool creditsMustNotExceedDebits = false;
  bool operator==(const Flags&) const = default;
};

struct Transfer {
  kj::String id;
  kj::String debitAccount;
  kj::String creditAccount;
  kj::String currency;
  int64_t amount = 0;
  Kind kind = Kind::POSTED;
  kj::String pendingId;
  int64_t timeoutMs = 0;
};

struct AccountSpec {
  kj::String id;
  kj::String currency;
  Flags flags;
};

// One unit of work for a batch: linked transfers (all or none), an account to create, or an
// expiry sweep.
struct Operation {
  enum class Type : uint8_t { TRANSFERS, CREATE_ACCOUNT, EXPIRE };
  Type type = Type::TRANSFERS;
  kj::Array<Transfer> transfers;
  AccountSpec account;
  // The ledger's clock (wall time, Unix ms) when the operation was submitted.
  int64_t nowMs = 0;
};

struct Outcome {
  bool ok = false;
  // Already recorded with the same fields; nothing changed.
  bool replayed = false;
  Reject code = Reject::INVALID_REQUEST;
  kj::String message;
  // The first transfer's id, or the account's id.
  kj::String id;
  // EXPIRE: how many pending transfers expired.
  uint32_t expired = 0;
};

struct Balance {
  kj::String id;
  kj::String currency;
  Flags flags;
  int64_t debitsPending = 0;
  int64_t debitsPosted = 0;
  int64_t creditsPending = 0;
  int64_t creditsPosted = 0;
};

struct Audit {
  kj::String currency;
  uint64_t transfers = 0;
  uint32_t accounts = 0;
  bool debitsEqualCredits = false;
  kj::Array<kj::String> mismatches;
};

// Creates the tables and indexes if they are missing.
void createSchema(SqlTransaction& tx, SqlDialect dialect);

// Applies `operations` in order in `tx`. An operation that is refused changes nothing; the others
// are unaffected. On PostgreSQL (`dialect`) it first locks every account the operations touch, in
// one order all batches share, so concurrent batches never deadlock on accounts. Returns one
// outcome per operation.
kj::Array<Outcome> applyBatch(SqlTransaction& tx, SqlDialect dialect,
                              kj::ArrayPtr<const Operation> operations);

kj::Maybe<Balance> loadBalance(SqlTransaction& tx, kj::StringPtr id, kj::StringPtr currency);
kj::Array<Balance> loadBalances(SqlTransaction& tx, kj::StringPtr currency);

// Replays the currency's transfer log from nothing and compares every account with its stored
// balance; also checks debits equal credits and each account's limit.
Audit audit(SqlTransaction& tx, kj::StringPtr currency);

// Whether `currency` is three upper-case ASCII letters.
bool isCurrencyCode(kj::StringPtr currency);

}  // namespace payhost::plugins::ledger
