#include "store.h"

namespace payhost::plugins::payments {
namespace {

constexpr kj::StringPtr PAYMENT_COLUMNS =
    "id, merchant, currency, settlement, card_txn, authorized, captured, refunded, settled, "
    "state, expires_at_ms, captures, refunds, released"_kj;

PaymentRow rowFrom(const SqlResult& r, size_t i) {
  return PaymentRow{kj::str(r.text(i, 0)), kj::str(r.text(i, 1)),
                    kj::str(r.text(i, 2)), kj::str(r.text(i, 3)),
                    kj::str(r.text(i, 4)), r.integer(i, 5),
                    r.integer(i, 6),       r.integer(i, 7),
                    r.integer(i, 8),       static_cast<TransactionState>(r.integer(i, 9)),
                    r.integer(i, 10),      r.integer(i, 11),
                    r.integer(i, 12),      r.integer(i, 13) != 0};
}

}  // namespace

kj::Maybe<PaymentRow> loadPayment(SqlTransaction& tx, kj::StringPtr id) {
  auto r = tx.execute(kj::str("SELECT ", PAYMENT_COLUMNS, " FROM payments WHERE id = $1"), {id});
  if (r.rowCount() == 0) return nullptr;
  return rowFrom(r, 0);
}

void createSchema(SqlTransaction& tx) {
  tx.execute(
      "CREATE TABLE IF NOT EXISTS payments_keys (key TEXT PRIMARY KEY, request TEXT NOT NULL, "
      "result BYTEA, claimed_at_ms BIGINT NOT NULL)");
  tx.execute(
      "CREATE TABLE IF NOT EXISTS payments (id TEXT PRIMARY KEY, merchant TEXT NOT NULL, "
      "currency TEXT NOT NULL, settlement TEXT NOT NULL, card_txn TEXT NOT NULL, "
      "authorized BIGINT NOT NULL, captured BIGINT NOT NULL, refunded BIGINT NOT NULL, "
      "settled BIGINT NOT NULL, state BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL, "
      "captures BIGINT NOT NULL, refunds BIGINT NOT NULL, released BIGINT NOT NULL)");
}

kj::Array<DbResult> applyDb(SqlTransaction& tx, kj::ArrayPtr<const DbOp> ops) {
  auto results = kj::heapArrayBuilder<DbResult>(ops.size());
  for (auto& op : ops) {
    DbResult out;
    if (op.type == DbOp::Type::CLAIM) {
      // Insert-or-nothing, then read: on PostgreSQL another shard's transaction may be claiming
      // the same key right now; the insert waits for it and does nothing, and the read (a new
      // snapshot per statement at READ COMMITTED) sees its claim. A read first and an insert
      // after would fail on the unique key instead.
      auto claimed = tx.execute(
          "INSERT INTO payments_keys (key, request, result, claimed_at_ms) "
          "VALUES ($1, $2, NULL, $3) ON CONFLICT (key) DO NOTHING RETURNING key",
          {op.key, op.request, op.nowMs});
      if (claimed.rowCount() == 1) {
        out.kind = DbResult::Kind::PROCEED;
      } else {
        auto found = tx.execute(
            "SELECT request, result, claimed_at_ms FROM payments_keys WHERE key = $1", {op.key});
        KJ_ASSERT(found.rowCount() == 1, "a conflicting idempotency key is not there", op.key);
        if (found.text(0, 0) != op.request) {
          out.kind = DbResult::Kind::CONFLICT;
        } else if (!found.isNull(0, 1)) {
          out.kind = DbResult::Kind::STORED;
          out.stored = kj::heapArray(found.blob(0, 1));
        } else if (op.nowMs - found.integer(0, 2) >= op.staleMs) {
          tx.execute("UPDATE payments_keys SET claimed_at_ms = $2 WHERE key = $1",
                     {op.key, op.nowMs});
          out.kind = DbResult::Kind::PROCEED;
        } else {
          out.kind = DbResult::Kind::BUSY;
        }
      }
      if (out.kind == DbResult::Kind::PROCEED && op.paymentId.size() > 0) {
        out.payment = loadPayment(tx, op.paymentId);
      }
    } else if (op.type == DbOp::Type::SETTLE) {
      KJ_IF_MAYBE (p, op.payment) {
        tx.execute(
            "UPDATE payments SET card_txn = $2, authorized = $3, captured = $4, refunded = $5, "
            "settled = $6, state = $7, expires_at_ms = $8, captures = $9, refunds = $10, "
            "released = $11 WHERE id = $1 AND state = $12",
            {p->id, p->cardTxn, p->authorized, p->captured, p->refunded, p->settled,
             static_cast<int64_t>(p->state), p->expiresAtMs, p->captures, p->refunds,
             int64_t{p->released ? 1 : 0}, static_cast<int64_t>(TransactionState::UNKNOWN)});
      }
      out.payment = loadPayment(tx, op.paymentId);
      out.kind = DbResult::Kind::DONE;
    } else {
      tx.execute("UPDATE payments_keys SET result = $2 WHERE key = $1", {op.key, op.result});
      KJ_IF_MAYBE (p, op.payment) {
        tx.execute(kj::str("INSERT INTO payments (", PAYMENT_COLUMNS,
                           ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) "
                           "ON CONFLICT (id) DO UPDATE SET card_txn = excluded.card_txn, "
                           "authorized = excluded.authorized, captured = excluded.captured, "
                           "refunded = excluded.refunded, settled = excluded.settled, "
                           "state = excluded.state, expires_at_ms = excluded.expires_at_ms, "
                           "captures = excluded.captures, refunds = excluded.refunds, "
                           "released = excluded.released"),
                   {p->id, p->merchant, p->currency, p->settlement, p->cardTxn, p->authorized,
                    p->captured, p->refunded, p->settled, static_cast<int64_t>(p->state),
                    p->expiresAtMs, p->captures, p->refunds, int64_t{p->released ? 1 : 0}});
      }
      out.kind = DbResult::Kind::DONE;
    }
    results.add(kj::mv(out));
  }
  return results.finish();
}

namespace {

uint64_t fnv(kj::StringPtr text, uint64_t seed) {
  uint64_t h = seed;
  for (char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

kj::String paymentIdFor(kj::StringPtr key) {
  return kj::str("pay_", kj::hex(fnv(key, 14695981039346656037ull)),
                 kj::hex(fnv(key, 1469598103934665603ull)));
}

bool validText(kj::StringPtr text, size_t max) {
  if (text.size() == 0 || text.size() > max) return false;
  for (char c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  }
  return true;
}

kj::String merchantAccount(kj::StringPtr merchant) {
  return kj::str("merchant:", merchant);
}

}  // namespace payhost::plugins::payments
