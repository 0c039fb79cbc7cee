#include "engine.h"

#include <kj/debug.h>
#include <kj/vector.h>

#include <limits>
#include <map>
#include <set>
#include <string>
#include <utility>

namespace payhost::plugins::ledger {

namespace {

constexpr size_t MAX_ID_BYTES = 255;
constexpr uint32_t MAX_EXPIRIES_PER_SWEEP = 1000;
constexpr int64_t MAX_TIMEOUT_MS = int64_t{10} * 366 * 24 * 3600 * 1000;

// Sums of int64 balances: exact, with room for any number of accounts we will ever hold.
__extension__ using Wide = __int128;
__extension__ using UnsignedWide = unsigned __int128;

std::string key(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

using AccountKey = std::pair<std::string, std::string>;  // currency, id

int64_t encodeFlags(Flags flags) {
  return (flags.debitsMustNotExceedCredits ? 1 : 0) | (flags.creditsMustNotExceedDebits ? 2 : 0);
}

Flags decodeFlags(int64_t bits) {
  return Flags{(bits & 1) != 0, (bits & 2) != 0};
}

kj::String wideText(Wide value) {
  bool negative = value < 0;
  UnsignedWide magnitude =
      negative ? static_cast<UnsignedWide>(-(value + 1)) + 1 : static_cast<UnsignedWide>(value);
  char digits[48];
  size_t n = 0;
  do {
    digits[n++] = static_cast<char>('0' + static_cast<int>(magnitude % 10));
    magnitude /= 10;
  } while (magnitude != 0);
  kj::Vector<char> text(n + 2);
  if (negative) text.add('-');
  while (n > 0)
    text.add(digits[--n]);
  text.add('\0');
  return kj::String(text.releaseAsArray());
}

struct Row {
  Kind kind = Kind::POSTED;
  kj::String id;
  kj::String debit;
  kj::String credit;
  kj::String currency;
  int64_t amount = 0;
  kj::String pendingId;
  int64_t timeoutMs = 0;
  int64_t expiresAtMs = 0;

  Row clone() const {
    return Row{kind,   kj::str(id),        kj::str(debit), kj::str(credit), kj::str(currency),
               amount, kj::str(pendingId), timeoutMs,      expiresAtMs};
  }
};

struct Refusal {
  Reject code;
  kj::String message;
};

Outcome refused(Reject code, kj::String message, kj::StringPtr id) {
  Outcome outcome;
  outcome.ok = false;
  outcome.code = code;
  outcome.message = kj::mv(message);
  outcome.id = kj::str(id);
  return outcome;
}

bool validId(kj::StringPtr id) {
  if (id.size() == 0 || id.size() > MAX_ID_BYTES) return false;
  for (char c : id) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  }
  return true;
}

// The state one transaction builds up: what it read (accounts locked on PostgreSQL) and what it
// changed. Balances are written back once, at the end.
class Batch {
public:
  Batch(SqlTransaction& tx, SqlDialect dialect) : tx(tx), dialect(dialect) {}

  Outcome apply(const Operation& operation) {
    switch (operation.type) {
      case Operation::Type::CREATE_ACCOUNT:
        return createAccount(operation.account);
      case Operation::Type::TRANSFERS:
        return transfers(operation.transfers, operation.nowMs);
      case Operation::Type::EXPIRE:
        return expireDue(operation.nowMs);
    }
    KJ_UNREACHABLE;
  }

  // PostgreSQL: locks every existing account the operations will touch before touching any, in
  // the one order all batches follow (currency, then id, by bytes). Two batches on different
  // connections (two shards, two hosts) that share accounts then queue behind each other instead
  // of each locking half and deadlocking. Accounts of a pending transfer are read from its row
  // (immutable once written). SQLite needs none of this: its write transactions are serial.
  void lockInOrder(kj::ArrayPtr<const Operation> operations) {
    std::set<AccountKey> keys;
    auto add = [&](kj::StringPtr id, kj::StringPtr currency) {
      if (validId(id) && isCurrencyCode(currency)) keys.emplace(key(currency), key(id));
    };
    auto addPending = [&](kj::StringPtr pendingId) {
      if (!validId(pendingId)) return;
      KJ_IF_MAYBE (row, transfer(pendingId)) {
        add(row->debit, row->currency);
        add(row->credit, row->currency);
      }
    };
    for (auto& operation : operations) {
      switch (operation.type) {
        case Operation::Type::CREATE_ACCOUNT:
          // A new row: its primary key orders concurrent creations.
          break;
        case Operation::Type::TRANSFERS:
          for (auto& t : operation.transfers) {
            if (t.kind == Kind::POSTED || t.kind == Kind::PENDING) {
              add(t.debitAccount, t.currency);
              add(t.creditAccount, t.currency);
            } else {
              addPending(t.pendingId);
            }
          }
          break;
        case Operation::Type::EXPIRE:
          for (auto& id : due(operation.nowMs))
            addPending(id);
          break;
      }
    }
    for (auto& [currency, id] : keys)
      account(kj::StringPtr(id.data(), id.size()), kj::StringPtr(currency.data(), currency.size()));
  }

  void writeBack() {
    for (auto& [k, state] : accounts) {
      KJ_IF_MAYBE (account, state) {
        if (!account->dirty) continue;
        auto& b = account->balance;
        tx.execute(
            "UPDATE ledger_accounts SET debits_pending = $3, debits_posted = $4, "
            "credits_pending = $5, credits_posted = $6 WHERE currency = $1 AND id = $2",
            {b.currency, b.id, b.debitsPending, b.debitsPosted, b.creditsPending, b.creditsPosted});
        account->dirty = false;
      }
    }
  }

private:
  struct Account {
    Balance balance;
    bool dirty = false;
  };

  SqlTransaction& tx;
  SqlDialect dialect;
  std::map<AccountKey, kj::Maybe<Account>> accounts;
  std::map<std::string, kj::Maybe<Row>> transfersById;
  std::set<std::string> resolvedPendings;

  // A chain's changes before it is known to succeed.
  struct Scratch {
    std::map<AccountKey, Balance> balances;
    std::map<std::string, Row> rows;
    kj::Vector<Row> ordered;
    std::set<std::string> resolved;
  };

  kj::Maybe<Account&> account(kj::StringPtr id, kj::StringPtr currency) {
    AccountKey k{key(currency), key(id)};
    auto it = accounts.find(k);
    if (it == accounts.end()) {
      auto sql = dialect == SqlDialect::POSTGRESQL
                     ? "SELECT flags, debits_pending, debits_posted, credits_pending, "
                       "credits_posted FROM ledger_accounts WHERE currency = $1 AND id = $2 "
                       "FOR UPDATE"_kj
                     : "SELECT flags, debits_pending, debits_posted, credits_pending, "
                       "credits_posted FROM ledger_accounts WHERE currency = $1 AND id = $2"_kj;
      auto result = tx.execute(sql, {currency, id});
      kj::Maybe<Account> loaded;
      if (result.rowCount() == 1) {
        Account a;
        a.balance.id = kj::str(id);
        a.balance.currency = kj::str(currency);
        a.balance.flags = decodeFlags(result.integer(0, 0));
        a.balance.debitsPending = result.integer(0, 1);
        a.balance.debitsPosted = result.integer(0, 2);
        a.balance.creditsPending = result.integer(0, 3);
        a.balance.creditsPosted = result.integer(0, 4);
        loaded = kj::mv(a);
      }
      it = accounts.emplace(k, kj::mv(loaded)).first;
    }
    return it->second;
  }

  kj::Maybe<const Row&> transfer(kj::StringPtr id) {
    auto k = key(id);
    auto it = transfersById.find(k);
    if (it == transfersById.end()) {
      auto result = tx.execute(
          "SELECT kind, debit_account, credit_account, currency, amount, pending_id, timeout_ms, "
          "expires_at_ms FROM ledger_transfers WHERE id = $1",
          {id});
      kj::Maybe<Row> loaded;
      if (result.rowCount() == 1) {
        loaded = Row{static_cast<Kind>(result.integer(0, 0)),
                     kj::str(id),
                     kj::str(result.text(0, 1)),
                     kj::str(result.text(0, 2)),
                     kj::str(result.text(0, 3)),
                     result.integer(0, 4),
                     result.isNull(0, 5) ? kj::str() : kj::str(result.text(0, 5)),
                     result.integer(0, 6),
                     result.integer(0, 7)};
      }
      it = transfersById.emplace(k, kj::mv(loaded)).first;
    }
    KJ_IF_MAYBE (row, it->second) {
      return *row;
    }
    return nullptr;
  }

  bool resolved(kj::StringPtr pendingId) {
    auto k = key(pendingId);
    if (resolvedPendings.count(k) != 0) return true;
    auto result = tx.execute("SELECT 1 FROM ledger_transfers WHERE pending_id = $1", {pendingId});
    if (result.rowCount() > 0) {
      resolvedPendings.insert(k);
      return true;
    }
    return false;
  }

  void insertRow(const Row& row, int64_t nowMs) {
    SqlParam id = row.id.size() == 0 ? SqlParam(nullptr) : SqlParam(row.id);
    SqlParam pending = row.pendingId.size() == 0 ? SqlParam(nullptr) : SqlParam(row.pendingId);
    tx.execute(
        "INSERT INTO ledger_transfers (id, currency, kind, debit_account, credit_account, amount, "
        "pending_id, timeout_ms, expires_at_ms, created_at_ms) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        {id, row.currency, static_cast<int64_t>(row.kind), row.debit, row.credit, row.amount,
         pending, row.timeoutMs, row.expiresAtMs, nowMs});
  }

  Outcome createAccount(const AccountSpec& spec) {
    if (!validId(spec.id)) {
      return refused(Reject::INVALID_REQUEST, kj::str("account id must be 1 to 255 bytes"),
                     spec.id);
    }
    if (!isCurrencyCode(spec.currency)) {
      return refused(Reject::INVALID_REQUEST, kj::str("currency must be three upper-case letters"),
                     spec.id);
    }
    if (spec.flags.debitsMustNotExceedCredits && spec.flags.creditsMustNotExceedDebits) {
      return refused(Reject::INVALID_REQUEST,
                     kj::str("an account cannot limit both debits and credits"), spec.id);
    }
    KJ_IF_MAYBE (existing, account(spec.id, spec.currency)) {
      if (existing->balance.flags == spec.flags) {
        Outcome outcome;
        outcome.ok = true;
        outcome.replayed = true;
        outcome.id = kj::str(spec.id);
        return outcome;
      }
      return refused(Reject::IDEMPOTENCY_CONFLICT, kj::str("account exists with other flags"),
                     spec.id);
    }
    tx.execute(
        "INSERT INTO ledger_accounts (id, currency, flags, debits_pending, debits_posted, "
        "credits_pending, credits_posted) VALUES ($1, $2, $3, 0, 0, 0, 0)",
        {spec.id, spec.currency, encodeFlags(spec.flags)});
    Account a;
    a.balance.id = kj::str(spec.id);
    a.balance.currency = kj::str(spec.currency);
    a.balance.flags = spec.flags;
    accounts[AccountKey{key(spec.currency), key(spec.id)}] = kj::mv(a);
    Outcome outcome;
    outcome.ok = true;
    outcome.id = kj::str(spec.id);
    return outcome;
  }

  // The balance a chain sees: its own change if any, else the batch's.
  kj::Maybe<Balance&> scratchBalance(Scratch& scratch, kj::StringPtr id, kj::StringPtr currency) {
    AccountKey k{key(currency), key(id)};
    auto it = scratch.balances.find(k);
    if (it != scratch.balances.end()) return it->second;
    KJ_IF_MAYBE (a, account(id, currency)) {
      auto& b = a->balance;
      auto copy = Balance{kj::str(b.id),  kj::str(b.currency), b.flags,        b.debitsPending,
                          b.debitsPosted, b.creditsPending,    b.creditsPosted};
      return scratch.balances.emplace(k, kj::mv(copy)).first->second;
    }
    return nullptr;
  }

  kj::Maybe<const Row&> scratchTransfer(Scratch& scratch, kj::StringPtr id) {
    auto it = scratch.rows.find(key(id));
    if (it != scratch.rows.end()) return it->second;
    return transfer(id);
  }

  static bool sameRequest(const Row& row, const Transfer& t) {
    if (row.kind != t.kind || row.currency != t.currency || row.pendingId != t.pendingId ||
        row.timeoutMs != t.timeoutMs) {
      return false;
    }
    bool resolving = t.kind == Kind::POST_PENDING || t.kind == Kind::VOID_PENDING;
    if (resolving) {
      if (t.debitAccount.size() != 0 && t.debitAccount != row.debit) return false;
      if (t.creditAccount.size() != 0 && t.creditAccount != row.credit) return false;
      if (t.kind == Kind::VOID_PENDING) return t.amount == 0 || t.amount == row.amount;
      return t.amount == row.amount;
    }
    return row.debit == t.debitAccount && row.credit == t.creditAccount && row.amount == t.amount;
  }

  static kj::Maybe<kj::String> checkShape(const Transfer& t) {
    if (!validId(t.id)) return kj::str("transfer id must be 1 to 255 printable bytes");
    if (!isCurrencyCode(t.currency)) return kj::str("currency must be three upper-case letters");
    switch (t.kind) {
      case Kind::POSTED:
      case Kind::PENDING:
        if (!validId(t.debitAccount) || !validId(t.creditAccount)) {
          return kj::str("debit and credit accounts must be 1 to 255 bytes");
        }
        if (t.debitAccount == t.creditAccount) {
          return kj::str("debit and credit accounts must differ");
        }
        if (t.amount <= 0) return kj::str("amount must be positive");
        if (t.pendingId.size() != 0) return kj::str("only a post or void names a pending transfer");
        if (t.kind == Kind::POSTED && t.timeoutMs != 0) {
          return kj::str("only a pending transfer has a timeout");
        }
        if (t.timeoutMs < 0 || t.timeoutMs > MAX_TIMEOUT_MS) {
          return kj::str("timeout must be 0 to ", MAX_TIMEOUT_MS, " ms");
        }
        return nullptr;
      case Kind::POST_PENDING:
      case Kind::VOID_PENDING:
        if (!validId(t.pendingId)) return kj::str("a post or void must name a pending transfer");
        if (t.timeoutMs != 0) return kj::str("only a pending transfer has a timeout");
        if (t.kind == Kind::POST_PENDING && t.amount <= 0) {
          return kj::str("amount must be positive");
        }
        if (t.amount < 0) return kj::str("amount must not be negative");
        return nullptr;
      case Kind::EXPIRE_PENDING:
        return kj::str("expiry is recorded by the ledger, not requested");
    }
    return kj::str("unknown transfer kind");
  }

  static bool add(int64_t& field, int64_t amount) {
    return !__builtin_add_overflow(field, amount, &field);
  }

  // Whether `b` keeps its limit. Pending debits count against the limit, so a post never needs
  // more room than its pending transfer had.
  static bool withinLimit(const Balance& b) {
    if (b.flags.debitsMustNotExceedCredits &&
        Wide(b.debitsPending) + b.debitsPosted > Wide(b.creditsPosted)) {
      return false;
    }
    if (b.flags.creditsMustNotExceedDebits &&
        Wide(b.creditsPending) + b.creditsPosted > Wide(b.debitsPosted)) {
      return false;
    }
    return true;
  }

  // Each side's pending plus posted stays within int64, so posting a pending transfer can never
  // overflow.
  static bool roomFor(const Balance& b) {
    constexpr Wide MAX = std::numeric_limits<int64_t>::max();
    return Wide(b.debitsPending) + b.debitsPosted <= MAX &&
           Wide(b.creditsPending) + b.creditsPosted <= MAX;
  }

  kj::Maybe<Refusal> applyOne(Scratch& scratch, const Transfer& t, int64_t nowMs,
                              kj::Maybe<kj::String>& expireNow) {
    KJ_IF_MAYBE (message, checkShape(t)) {
      return Refusal{Reject::INVALID_REQUEST, kj::mv(*message)};
    }
    Row row;
    row.kind = t.kind;
    row.id = kj::str(t.id);
    row.currency = kj::str(t.currency);
    row.timeoutMs = t.timeoutMs;
    if (t.kind == Kind::POSTED || t.kind == Kind::PENDING) {
      auto debitMaybe = scratchBalance(scratch, t.debitAccount, t.currency);
      auto creditMaybe = scratchBalance(scratch, t.creditAccount, t.currency);
      Balance* debit = nullptr;
      Balance* credit = nullptr;
      KJ_IF_MAYBE (d, debitMaybe) {
        debit = d;
      }
      KJ_IF_MAYBE (c, creditMaybe) {
        credit = c;
      }
      if (debit == nullptr || credit == nullptr) {
        return Refusal{Reject::INVALID_REQUEST,
                       kj::str("no account ", debit == nullptr ? t.debitAccount : t.creditAccount,
                               " in ledger ", t.currency)};
      }
      bool fits =
          t.kind == Kind::POSTED
              ? add(debit->debitsPosted, t.amount) && add(credit->creditsPosted, t.amount)
              : add(debit->debitsPending, t.amount) && add(credit->creditsPending, t.amount);
      if (!fits || !roomFor(*debit) || !roomFor(*credit)) {
        return Refusal{Reject::INVALID_REQUEST,
                       kj::str("amount would overflow an account's 64-bit balance")};
      }
      if (!withinLimit(*debit)) {
        return Refusal{Reject::EXCEEDS_LIMIT,
                       kj::str("account ", t.debitAccount, " would have debits above its credits")};
      }
      if (!withinLimit(*credit)) {
        return Refusal{Reject::EXCEEDS_LIMIT, kj::str("account ", t.creditAccount,
                                                      " would have credits above its debits")};
      }
      row.debit = kj::str(t.debitAccount);
      row.credit = kj::str(t.creditAccount);
      row.amount = t.amount;
      row.expiresAtMs = t.kind == Kind::PENDING && t.timeoutMs > 0 ? nowMs + t.timeoutMs : 0;
    } else {
      const Row* pending = nullptr;
      KJ_IF_MAYBE (p, scratchTransfer(scratch, t.pendingId)) {
        pending = p;
      }
      if (pending == nullptr || pending->kind != Kind::PENDING) {
        return Refusal{Reject::UNKNOWN_TRANSACTION, kj::str("no pending transfer ", t.pendingId)};
      }
      if (pending->currency != t.currency) {
        return Refusal{Reject::CURRENCY_MISMATCH,
                       kj::str("pending transfer ", t.pendingId, " is in ", pending->currency)};
      }
      if ((t.debitAccount.size() != 0 && t.debitAccount != pending->debit) ||
          (t.creditAccount.size() != 0 && t.creditAccount != pending->credit)) {
        return Refusal{Reject::INVALID_REQUEST,
                       kj::str("accounts differ from pending transfer ", t.pendingId, "'s")};
      }
      if (scratch.resolved.count(key(t.pendingId)) != 0 || resolved(t.pendingId)) {
        return Refusal{Reject::INVALID_STATE, kj::str("pending transfer ", t.pendingId,
                                                      " was already posted, voided or expired")};
      }
      if (pending->expiresAtMs > 0 && pending->expiresAtMs <= nowMs) {
        expireNow = kj::str(t.pendingId);
        return Refusal{Reject::INVALID_STATE,
                       kj::str("pending transfer ", t.pendingId, " expired")};
      }
      if (t.kind == Kind::POST_PENDING && t.amount > pending->amount) {
        return Refusal{Reject::EXCEEDS_LIMIT,
                       kj::str("post of ", t.amount, " is above pending ", pending->amount)};
      }
      if (t.kind == Kind::VOID_PENDING && t.amount != 0 && t.amount != pending->amount) {
        return Refusal{Reject::INVALID_REQUEST,
                       kj::str("a void's amount must be 0 or the pending amount")};
      }
      auto& debit = KJ_ASSERT_NONNULL(scratchBalance(scratch, pending->debit, pending->currency));
      auto& credit = KJ_ASSERT_NONNULL(scratchBalance(scratch, pending->credit, pending->currency));
      debit.debitsPending -= pending->amount;
      credit.creditsPending -= pending->amount;
      int64_t posted = t.kind == Kind::POST_PENDING ? t.amount : 0;
      // Cannot overflow: pending plus posted fitted before (roomFor), and posted <= pending.
      debit.debitsPosted += posted;
      credit.creditsPosted += posted;
      row.debit = kj::str(pending->debit);
      row.credit = kj::str(pending->credit);
      row.amount = t.kind == Kind::POST_PENDING ? t.amount : pending->amount;
      row.pendingId = kj::str(t.pendingId);
      scratch.resolved.insert(key(t.pendingId));
    }
    scratch.ordered.add(row.clone());
    scratch.rows.emplace(key(t.id), kj::mv(row));
    return nullptr;
  }

  Outcome transfers(kj::ArrayPtr<const Transfer> chain, int64_t nowMs) {
    if (chain.size() == 0) {
      return refused(Reject::INVALID_REQUEST, kj::str("no transfers"), "");
    }
    Scratch scratch;
    size_t replayed = 0;
    for (auto i : kj::indices(chain)) {
      auto& t = chain[i];
      auto where = [&](kj::StringPtr message) {
        return chain.size() == 1 ? kj::str(message) : kj::str("transfer ", i, ": ", message);
      };
      if (validId(t.id)) {
        KJ_IF_MAYBE (existing, scratchTransfer(scratch, t.id)) {
          if (sameRequest(*existing, t)) {
            ++replayed;
            continue;
          }
          return refused(Reject::IDEMPOTENCY_CONFLICT,
                         where(kj::str("transfer ", t.id, " exists with other fields")),
                         chain[0].id);
        }
      }
      kj::Maybe<kj::String> expireNow;
      KJ_IF_MAYBE (refusal, applyOne(scratch, t, nowMs, expireNow)) {
        KJ_IF_MAYBE (pendingId, expireNow) {
          expire(KJ_ASSERT_NONNULL(transfer(*pendingId)).clone(), nowMs);
        }
        return refused(refusal->code, where(refusal->message), chain[0].id);
      }
    }
    // The chain holds: make its changes the batch's.
    for (auto& [k, balance] : scratch.balances) {
      auto& a = KJ_ASSERT_NONNULL(accounts[k]);
      if (a.balance.debitsPending != balance.debitsPending ||
          a.balance.debitsPosted != balance.debitsPosted ||
          a.balance.creditsPending != balance.creditsPending ||
          a.balance.creditsPosted != balance.creditsPosted) {
        a.balance.debitsPending = balance.debitsPending;
        a.balance.debitsPosted = balance.debitsPosted;
        a.balance.creditsPending = balance.creditsPending;
        a.balance.creditsPosted = balance.creditsPosted;
        a.dirty = true;
      }
    }
    for (auto& row : scratch.ordered) {
      insertRow(row, nowMs);
    }
    for (auto& [k, row] : scratch.rows) {
      transfersById[k] = kj::mv(row);
    }
    for (auto& r : scratch.resolved)
      resolvedPendings.insert(r);
    Outcome outcome;
    outcome.ok = true;
    outcome.replayed = replayed == chain.size();
    outcome.id = kj::str(chain[0].id);
    return outcome;
  }

  // Records the expiry of `pending` (known unresolved) and releases its amount.
  void expire(Row pending, int64_t nowMs) {
    auto& debit = KJ_ASSERT_NONNULL(account(pending.debit, pending.currency));
    auto& credit = KJ_ASSERT_NONNULL(account(pending.credit, pending.currency));
    debit.balance.debitsPending -= pending.amount;
    credit.balance.creditsPending -= pending.amount;
    debit.dirty = true;
    credit.dirty = true;
    Row row;
    row.kind = Kind::EXPIRE_PENDING;
    row.debit = kj::str(pending.debit);
    row.credit = kj::str(pending.credit);
    row.currency = kj::str(pending.currency);
    row.amount = pending.amount;
    row.pendingId = kj::str(pending.id);
    insertRow(row, nowMs);
    resolvedPendings.insert(key(pending.id));
  }

  // Unresolved pending transfers whose timeout has passed at `nowMs`, oldest first.
  kj::Array<kj::String> due(int64_t nowMs) {
    auto rows = tx.execute(
        kj::str("SELECT p.id FROM ledger_transfers p WHERE p.kind = 2 AND p.expires_at_ms > 0 "
                "AND p.expires_at_ms <= $1 AND NOT EXISTS (SELECT 1 FROM ledger_transfers r "
                "WHERE r.pending_id = p.id) ORDER BY p.seq LIMIT ",
                MAX_EXPIRIES_PER_SWEEP),
        {nowMs});
    auto ids = kj::heapArrayBuilder<kj::String>(rows.rowCount());
    for (size_t r = 0; r < rows.rowCount(); ++r)
      ids.add(kj::str(rows.text(r, 0)));
    return ids.finish();
  }

  Outcome expireDue(int64_t nowMs) {
    Outcome outcome;
    outcome.ok = true;
    for (auto& id : due(nowMs)) {
      if (resolvedPendings.count(key(id)) != 0) continue;
      expire(KJ_ASSERT_NONNULL(transfer(id)).clone(), nowMs);
      ++outcome.expired;
    }
    return outcome;
  }
};

Balance balanceFromRow(const SqlResult& result, size_t r) {
  Balance b;
  b.id = kj::str(result.text(r, 0));
  b.currency = kj::str(result.text(r, 1));
  b.flags = decodeFlags(result.integer(r, 2));
  b.debitsPending = result.integer(r, 3);
  b.debitsPosted = result.integer(r, 4);
  b.creditsPending = result.integer(r, 5);
  b.creditsPosted = result.integer(r, 6);
  return b;
}

constexpr kj::StringPtr BALANCE_COLUMNS =
    "id, currency, flags, debits_pending, debits_posted, credits_pending, credits_posted"_kj;

}  // namespace

kj::StringPtr nameOf(Reject code) {
  switch (code) {
    case Reject::INVALID_REQUEST:
      return "invalid_request";
    case Reject::IDEMPOTENCY_CONFLICT:
      return "idempotency_conflict";
    case Reject::INVALID_STATE:
      return "invalid_state";
    case Reject::UNKNOWN_TRANSACTION:
      return "unknown_transaction";
    case Reject::EXCEEDS_LIMIT:
      return "exceeds_limit";
    case Reject::CURRENCY_MISMATCH:
      return "currency_mismatch";
  }
  return "unknown";
}

bool isCurrencyCode(kj::StringPtr currency) {
  if (currency.size() != 3) return false;
  for (char c : currency) {
    if (c < 'A' || c > 'Z') return false;
  }
  return true;
}

void createSchema(SqlTransaction& tx, SqlDialect dialect) {
  tx.execute(
      "CREATE TABLE IF NOT EXISTS ledger_accounts (id TEXT NOT NULL, currency TEXT NOT NULL, "
      "flags BIGINT NOT NULL, debits_pending BIGINT NOT NULL, debits_posted BIGINT NOT NULL, "
      "credits_pending BIGINT NOT NULL, credits_posted BIGINT NOT NULL, "
      "PRIMARY KEY (currency, id))");
  // `seq` orders the log for replay; expiry rows have no id; `pending_id` is unique, so a pending
  // transfer is resolved (posted, voided or expired) at most once.
  tx.execute(kj::str("CREATE TABLE IF NOT EXISTS ledger_transfers (seq ",
                     dialect == SqlDialect::POSTGRESQL ? "BIGSERIAL" : "INTEGER",
                     " PRIMARY KEY, id TEXT UNIQUE, currency TEXT NOT NULL, kind BIGINT NOT NULL, "
                     "debit_account TEXT NOT NULL, credit_account TEXT NOT NULL, "
                     "amount BIGINT NOT NULL, pending_id TEXT UNIQUE, timeout_ms BIGINT NOT NULL, "
                     "expires_at_ms BIGINT NOT NULL, created_at_ms BIGINT NOT NULL)"));
  tx.execute(
      "CREATE INDEX IF NOT EXISTS ledger_transfers_by_currency ON ledger_transfers "
      "(currency, seq)");
  tx.execute(
      "CREATE INDEX IF NOT EXISTS ledger_transfers_due ON ledger_transfers (expires_at_ms) "
      "WHERE kind = 2 AND expires_at_ms > 0");
}

kj::Array<Outcome> applyBatch(SqlTransaction& tx, SqlDialect dialect,
                              kj::ArrayPtr<const Operation> operations) {
  Batch batch(tx, dialect);
  if (dialect == SqlDialect::POSTGRESQL) batch.lockInOrder(operations);
  auto outcomes = kj::heapArrayBuilder<Outcome>(operations.size());
  for (auto& operation : operations)
    outcomes.add(batch.apply(operation));
  batch.writeBack();
  return outcomes.finish();
}

kj::Maybe<Balance> loadBalance(SqlTransaction& tx, kj::StringPtr id, kj::StringPtr currency) {
  auto result = tx.execute(
      kj::str("SELECT ", BALANCE_COLUMNS, " FROM ledger_accounts WHERE currency = $1 AND id = $2"),
      {currency, id});
  if (result.rowCount() == 0) return nullptr;
  return balanceFromRow(result, 0);
}

kj::Array<Balance> loadBalances(SqlTransaction& tx, kj::StringPtr currency) {
  auto result = tx.execute(
      kj::str("SELECT ", BALANCE_COLUMNS, " FROM ledger_accounts WHERE currency = $1 ORDER BY id"),
      {currency});
  auto balances = kj::heapArrayBuilder<Balance>(result.rowCount());
  for (size_t r = 0; r < result.rowCount(); ++r)
    balances.add(balanceFromRow(result, r));
  return balances.finish();
}

Audit audit(SqlTransaction& tx, kj::StringPtr currency) {
  Audit report;
  report.currency = kj::str(currency);
  kj::Vector<kj::String> mismatches;

  struct Replayed {
    Wide debitsPending = 0;
    Wide debitsPosted = 0;
    Wide creditsPending = 0;
    Wide creditsPosted = 0;
  };
  std::map<std::string, Replayed> replay;
  std::map<std::string, int64_t> pendingAmounts;
  std::set<std::string> resolvedPendings;

  auto log = tx.execute(
      "SELECT kind, debit_account, credit_account, amount, pending_id, seq, id FROM "
      "ledger_transfers "
      "WHERE currency = $1 ORDER BY seq",
      {currency});
  report.transfers = log.rowCount();
  for (size_t r = 0; r < log.rowCount(); ++r) {
    auto kind = static_cast<Kind>(log.integer(r, 0));
    auto& debit = replay[key(log.text(r, 1))];
    auto& credit = replay[key(log.text(r, 2))];
    int64_t amount = log.integer(r, 3);
    if (amount < 0 || (amount == 0 && kind != Kind::VOID_PENDING)) {
      mismatches.add(kj::str("transfer #", log.integer(r, 5), " has amount ", amount));
    }
    switch (kind) {
      case Kind::POSTED:
        debit.debitsPosted += amount;
        credit.creditsPosted += amount;
        break;
      case Kind::PENDING: {
        pendingAmounts[key(log.isNull(r, 6) ? ""_kj : log.text(r, 6))] = amount;
        debit.debitsPending += amount;
        credit.creditsPending += amount;
        break;
      }
      case Kind::POST_PENDING:
      case Kind::VOID_PENDING:
      case Kind::EXPIRE_PENDING: {
        auto pendingId = key(log.isNull(r, 4) ? ""_kj : log.text(r, 4));
        auto it = pendingAmounts.find(pendingId);
        if (it == pendingAmounts.end()) {
          mismatches.add(kj::str("transfer #", log.integer(r, 5), " resolves unknown pending ",
                                 pendingId.c_str()));
          break;
        }
        if (!resolvedPendings.insert(pendingId).second) {
          mismatches.add(kj::str("pending ", pendingId.c_str(), " resolved twice"));
        }
        debit.debitsPending -= it->second;
        credit.creditsPending -= it->second;
        if (kind == Kind::POST_PENDING) {
          if (amount > it->second) {
            mismatches.add(kj::str("pending ", pendingId.c_str(), " posted ", amount,
                                   " above its amount ", it->second));
          }
          debit.debitsPosted += amount;
          credit.creditsPosted += amount;
        }
        break;
      }
    }
  }

  auto stored = loadBalances(tx, currency);
  report.accounts = static_cast<uint32_t>(stored.size());
  Wide debitsPending = 0;
  Wide debitsPosted = 0;
  Wide creditsPending = 0;
  Wide creditsPosted = 0;
  std::set<std::string> seen;
  for (auto& b : stored) {
    seen.insert(key(b.id));
    debitsPending += b.debitsPending;
    debitsPosted += b.debitsPosted;
    creditsPending += b.creditsPending;
    creditsPosted += b.creditsPosted;
    Replayed expected;
    auto it = replay.find(key(b.id));
    if (it != replay.end()) expected = it->second;
    if (expected.debitsPending != b.debitsPending || expected.debitsPosted != b.debitsPosted ||
        expected.creditsPending != b.creditsPending || expected.creditsPosted != b.creditsPosted) {
      mismatches.add(kj::str(
          "account ", b.id, ": stored debits ", b.debitsPending, "/", b.debitsPosted, " credits ",
          b.creditsPending, "/", b.creditsPosted, ", replayed debits ",
          wideText(expected.debitsPending), "/", wideText(expected.debitsPosted), " credits ",
          wideText(expected.creditsPending), "/", wideText(expected.creditsPosted)));
    }
    if (b.debitsPending < 0 || b.creditsPending < 0 || b.debitsPosted < 0 || b.creditsPosted < 0) {
      mismatches.add(kj::str("account ", b.id, " has a negative total"));
    }
    if (b.flags.debitsMustNotExceedCredits &&
        Wide(b.debitsPending) + b.debitsPosted > Wide(b.creditsPosted)) {
      mismatches.add(kj::str("account ", b.id, " has debits above its credits"));
    }
    if (b.flags.creditsMustNotExceedDebits &&
        Wide(b.creditsPending) + b.creditsPosted > Wide(b.debitsPosted)) {
      mismatches.add(kj::str("account ", b.id, " has credits above its debits"));
    }
  }
  for (auto& [id, r] : replay) {
    if (seen.count(id) == 0) {
      mismatches.add(kj::str("transfers name account ", id.c_str(), " which is not stored"));
    }
  }
  report.debitsEqualCredits = debitsPending == creditsPending && debitsPosted == creditsPosted;
  if (!report.debitsEqualCredits) {
    mismatches.add(kj::str("debits ", wideText(debitsPending), "/", wideText(debitsPosted),
                           " differ from credits ", wideText(creditsPending), "/",
                           wideText(creditsPosted)));
  }
  report.mismatches = mismatches.releaseAsArray();
  return report;
}

}  // namespace payhost::plugins::ledger
