// The payments plugin's stored state, without Cap'n Proto RPC: the payment row, the idempotency
// claim and result, the tables, and the batch function its group commit runs. Shared with the
// gRPC payments service of the benchmark (bench/grpc), so both do the same database work.
//
// Everything that takes a `SqlTransaction` runs inside one transaction on a worker thread and
// throws only on database errors; outcomes are values. Value types, no shared state.

#pragma once

#include <payhost/payments.capnp.h>
#include <payhost/sql.h>

#include <kj/array.h>
#include <kj/string.h>

#include <cstdint>

namespace payhost::plugins::payments {

using schema::TransactionState;

// Idempotency keys are 1 to MAX_KEY_BYTES printable bytes.
constexpr size_t MAX_KEY_BYTES = 255;

// A payment as stored in the `payments` table.
struct PaymentRow {
  kj::String id;
  kj::String merchant;
  kj::String currency;
  kj::String settlement;
  kj::String cardTxn;
  int64_t authorized = 0;
  int64_t captured = 0;
  int64_t refunded = 0;
  int64_t settled = 0;
  TransactionState state = TransactionState::UNSPECIFIED;
  int64_t expiresAtMs = 0;
  int64_t captures = 0;
  int64_t refunds = 0;
  bool released = false;

  PaymentRow clone() const {
    return PaymentRow{kj::str(id),       kj::str(merchant),
                      kj::str(currency), kj::str(settlement),
                      kj::str(cardTxn),  authorized,
                      captured,          refunded,
                      settled,           state,
                      expiresAtMs,       captures,
                      refunds,           released};
  }
};

// One unit of work for the payments database: claim an idempotency key (and load the payment it
// names), store a result and the payment row, or settle a payment whose card outcome was unknown.
struct DbOp {
  enum class Type : uint8_t { CLAIM, FINISH, SETTLE };
  Type type = Type::CLAIM;
  // CLAIM: a claim older than this is taken over: its process died before finishing (the retry
  // reruns the flow with the same ids, so nothing is applied twice).
  int64_t staleMs = 30'000;
  kj::String key;
  kj::String request;
  int64_t nowMs = 0;
  // CLAIM and SETTLE: the payment to load. FINISH: the payment to store (if any). SETTLE: the
  // payment's new row, stored only while the stored one is still in state `unknown` (a second
  // settlement, or one racing a capture of the first, changes nothing); the stored row is loaded
  // after it.
  kj::String paymentId;
  kj::Maybe<PaymentRow> payment;
  kj::Array<kj::byte> result;
};

// PROCEED: the key is now claimed by this call (`payment` is the stored row, if any); STORED: the
// key has a result (`stored`); CONFLICT: the key was used with another request; BUSY: another
// call holds the claim; DONE: a FINISH or SETTLE was written (SETTLE: `payment` is the stored row).
struct DbResult {
  enum class Kind : uint8_t { PROCEED, STORED, CONFLICT, BUSY, DONE };
  Kind kind = Kind::DONE;
  kj::Array<kj::byte> stored;
  kj::Maybe<PaymentRow> payment;
};

// Creates the tables if they are missing.
void createSchema(SqlTransaction& tx);

// The payment `id`, if stored.
kj::Maybe<PaymentRow> loadPayment(SqlTransaction& tx, kj::StringPtr id);

// Applies `ops` in order in `tx`; one result per op. A group-commit batch function.
kj::Array<DbResult> applyDb(SqlTransaction& tx, kj::ArrayPtr<const DbOp> ops);

// The payment id a purchase or authorization with idempotency key `key` gets: derived from the
// key, so a retry after a crash reuses it.
kj::String paymentIdFor(kj::StringPtr key);

// 1 to `max` bytes, none of them a control character.
bool validText(kj::StringPtr text, size_t max);

// The ledger account of a merchant.
kj::String merchantAccount(kj::StringPtr merchant);

}  // namespace payhost::plugins::payments
