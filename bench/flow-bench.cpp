// payhost-flow-bench: durable payments per second through the whole payment flow in payhostd,
// in one run beside either the naive rate of the same database writes into SQLite directly, or
// the same five services as separate gRPC processes calling each other.
//
//   payhost-flow-bench --payhostd build/host/payhostd --plugins build/plugins
//       [--dir /var/tmp/payhost-flow-bench] [--rounds 3] [--seconds 3] [--in-flight 64]
//       [--json FILE] [--fx-share 20] [--versus naive|grpc]
//       [--grpc-flow build/bench/grpc/payhost-bench-grpc-flow
//        --grpc-card build/bench/grpc/payhost-bench-grpc-server] [--plot-data DIR]
//
// flow      payhostd (a separate process, one shard) with the card-processor (latency_ms = 0),
//           fraud-screen, fx, ledger and payments plugins over SQLite files in `--dir` (WAL,
//           synchronous=FULL: the host's SqlPool). The bench keeps `--in-flight` purchases in
//           flight on one TCP connection (closed loop), each with a new idempotency key; a
//           purchase counts when it is answered approved and captured. The payments plugin
//           answers only after its result is durable (claim, ledger transfers and result are
//           group-committed, <payhost/group-commit.h>).
//
// --versus naive (the default): purchases of 1000 EUR minor units; `--fx-share` percent of them
// (default 20, evenly spread: every fifth) settled in USD, the others in EUR. An FX purchase asks
// payments.fx for a quote and posts two transfers, `cards -> fx` in EUR and `fx -> merchant` in
// USD, each its own ledger call; a same-currency one posts `cards -> merchant` in EUR. Beside
// naive     the writes one purchase makes (payments: key claim (insert-or-nothing), payment lookup;
//           ledger, per transfer: the id looked up, both accounts read, the row, both balances;
//           payments: result and payment row), and for an FX one the conversion with the fx
//           plugin's own code (plugins/fx/rate.cpp) and the SDK's currency table, into SQLite
//           directly in the same directory, the same purchases in the same mix, one durable
//           transaction (BEGIN IMMEDIATE .. COMMIT, WAL, synchronous=FULL) per payment, prepared
//           statements, one at a time: the rate without group commit.
// naive-3   the same writes split as the flow splits them, in two files (payments and ledger):
//           three durable transactions per payment (claim, transfer, result), four for an FX one
//           (the settlement transfer is its own), one at a time.
// The ratio is flow over naive (the one-transaction baseline, the stricter one), per round, then
// the median. At the end both sides' ledgers must balance in both currencies (payhostd's through
// Ledger.audit, the naive files by the same sums in SQL) and every account must hold what the
// acknowledged purchases put there.
//
// --versus grpc: purchases in USD settled in EUR, so the flow calls every service (fraud screen,
// card purchase, FX quote, the charge and the settlement transfers), beside
// grpc        the same services as five gRPC processes (bench/grpc/flow-services.cpp and the card
//             service payhost-bench-grpc-server), each compiled with its plugin's own code, the
//             payments service calling the other four over gRPC; ledger and payments make one
//             durable transaction per request; the bench calls payments over gRPC with the same
//             purchases in flight on one channel.
// grpc-batch  the same with ledger and payments group-committing what arrives during a commit.
// The headline is payments per server-CPU-second: the CPU of every server process (payhostd; the
// five gRPC processes), all threads, from /proc, over the run with its warm-up, per acknowledged
// purchase. Ratios are paired round by round, then the median. At the end each side's merchant
// balance must equal what the acknowledged purchases settled.
//
// The cases run in turns within each round so drift on a shared machine hits all of them.
#include "bench/histogram.h"
#include "bench/loadgen.h"
#include "bench/server-process.h"

#ifdef PAYHOST_BENCH_GRPC
#include "bench/grpc/flow-client.h"
#endif

#include <payhost/flow.capnp.h>
#include <payhost/host.capnp.h>
#include <payhost/money.h>
#include <payhost/payments.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <CLI/CLI.hpp>
#include <sqlite3.h>

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "plugins/fx/rate.h"

namespace payhost::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
// Every purchase is AMOUNT minor units of CURRENCY; against SQLite directly, the FX ones
// (`--fx-share`) settle in FX_SETTLEMENT at RATE (payhostd's fx plugin is configured with it).
constexpr int64_t AMOUNT = 1000;
constexpr const char* CURRENCY = "EUR";
constexpr const char* FX_SETTLEMENT = "USD";
constexpr const char* RATE = "1.0842";

// --- the naive baseline
// ---------------------------------------------------------------------------

void check(int status, sqlite3* db, const char* what) {
  if (status != SQLITE_OK && status != SQLITE_DONE && status != SQLITE_ROW) {
    KJ_FAIL_REQUIRE("sqlite", what, sqlite3_errmsg(db));
  }
}

void exec(sqlite3* db, const char* sql) {
  check(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), db, sql);
}

sqlite3* openDurable(const std::string& path) {
  sqlite3* db = nullptr;
  check(sqlite3_open(path.c_str(), &db), db, "open");
  exec(db, "PRAGMA journal_mode=WAL");
  exec(db, "PRAGMA synchronous=FULL");
  return db;
}

// Whether purchase number `n` (0, 1, 2, ...) is an FX one when `share` percent are: spread
// evenly, exactly `share` of every 100 consecutive purchases (20: every fifth).
bool isFx(uint64_t n, uint32_t share) {
  return (n + 1) * share / 100 != n * share / 100;
}

// The ledger accounts of the flow (plugins/payments/README.md "Ledger accounts") with their
// `debitsMustNotExceedCredits` flag: what the payments plugin creates once per instance.
struct AccountSpec {
  const char* id;
  const char* currency;
  bool limited;
};
constexpr AccountSpec ACCOUNTS[] = {{"cards", CURRENCY, false},
                                    {"merchant:m1", CURRENCY, true},
                                    {"fx", CURRENCY, false},
                                    {"merchant:m1", FX_SETTLEMENT, true},
                                    {"fx", FX_SETTLEMENT, false}};

// What an account's posted debits and credits must be after `payments` purchases of which
// `fxPayments` were FX ones, each settling `settled` (no pending amounts: every one a purchase).
struct ExpectedBalance {
  const char* id;
  const char* currency;
  int64_t debits;
  int64_t credits;
};

std::array<ExpectedBalance, 5> expectedBalances(uint64_t payments, uint64_t fxPayments,
                                                int64_t settled) {
  auto times = [](uint64_t n, int64_t amount) { return static_cast<int64_t>(n) * amount; };
  return {{{"cards", CURRENCY, times(payments, AMOUNT), 0},
           {"merchant:m1", CURRENCY, 0, times(payments - fxPayments, AMOUNT)},
           {"fx", CURRENCY, 0, times(fxPayments, AMOUNT)},
           {"merchant:m1", FX_SETTLEMENT, 0, times(fxPayments, settled)},
           {"fx", FX_SETTLEMENT, times(fxPayments, settled), 0}}};
}

// The payments plugin's and the ledger's tables (plugins/payments/payments.cpp,
// plugins/ledger/engine.cpp createSchema), and the statements one purchase runs. An FX purchase
// (AMOUNT in CURRENCY settled in FX_SETTLEMENT) also converts the amount here, with the FX
// plugin's own code (plugins/fx/rate.cpp, the SDK's currency table), as the fx plugin does for
// each quote, and writes a second transfer as the ledger does for the settlement.
class Naive {
public:
  // `split`: the transactions as the flow splits them (claim; charge transfer; settlement
  // transfer when FX; result) in two files; otherwise one transaction per payment in one file.
  Naive(const fs::path& dir, bool split, uint32_t fxShare)
      : split(split), fxShare(fxShare), rate([] {
          kj::StringPtr problem;
          return KJ_REQUIRE_NONNULL(plugins::fx::tryParseRate(RATE, problem), problem);
        }()) {
    auto prefix = split ? "naive3" : "naive1";
    payDb = openDurable((dir / (std::string(prefix) + "-payments.sqlite")).native());
    ledgerDb =
        split ? openDurable((dir / (std::string(prefix) + "-ledger.sqlite")).native()) : payDb;
    exec(payDb,
         "CREATE TABLE IF NOT EXISTS payments_keys (key TEXT PRIMARY KEY, request TEXT NOT NULL, "
         "result BYTEA, claimed_at_ms BIGINT NOT NULL);"
         "CREATE TABLE IF NOT EXISTS payments (id TEXT PRIMARY KEY, merchant TEXT NOT NULL, "
         "currency TEXT NOT NULL, settlement TEXT NOT NULL, card_txn TEXT NOT NULL, "
         "authorized BIGINT NOT NULL, captured BIGINT NOT NULL, refunded BIGINT NOT NULL, "
         "settled BIGINT NOT NULL, state BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL, "
         "captures BIGINT NOT NULL, refunds BIGINT NOT NULL, released BIGINT NOT NULL)");
    exec(ledgerDb,
         "CREATE TABLE IF NOT EXISTS ledger_accounts (id TEXT NOT NULL, currency TEXT NOT NULL, "
         "flags BIGINT NOT NULL, debits_pending BIGINT NOT NULL, debits_posted BIGINT NOT NULL, "
         "credits_pending BIGINT NOT NULL, credits_posted BIGINT NOT NULL, "
         "PRIMARY KEY (currency, id));"
         "CREATE TABLE IF NOT EXISTS ledger_transfers (seq INTEGER PRIMARY KEY, id TEXT UNIQUE, "
         "currency TEXT NOT NULL, kind BIGINT NOT NULL, debit_account TEXT NOT NULL, "
         "credit_account TEXT NOT NULL, amount BIGINT NOT NULL, pending_id TEXT UNIQUE, "
         "timeout_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL, "
         "created_at_ms BIGINT NOT NULL);"
         "CREATE INDEX IF NOT EXISTS ledger_transfers_by_currency ON ledger_transfers "
         "(currency, seq);"
         "CREATE INDEX IF NOT EXISTS ledger_transfers_due ON ledger_transfers (expires_at_ms) "
         "WHERE kind = 2 AND expires_at_ms > 0;");
    auto* create =
        prepare(ledgerDb, "INSERT OR IGNORE INTO ledger_accounts VALUES (?1, ?2, ?3, 0, 0, 0, 0)");
    for (auto& a : ACCOUNTS) {
      sqlite3_bind_text(create, 1, a.id, -1, SQLITE_STATIC);
      sqlite3_bind_text(create, 2, a.currency, -1, SQLITE_STATIC);
      sqlite3_bind_int64(create, 3, a.limited ? 1 : 0);
      step(ledgerDb, create);
    }
    sqlite3_finalize(create);
    claimKey = prepare(payDb,
                       "INSERT INTO payments_keys (key, request, result, claimed_at_ms) VALUES "
                       "(?1, ?2, NULL, ?3) ON CONFLICT (key) DO NOTHING RETURNING key");
    findPayment = prepare(payDb,
                          "SELECT id, merchant, currency, settlement, card_txn, authorized, "
                          "captured, refunded, settled, state, expires_at_ms, captures, refunds, "
                          "released FROM payments WHERE id = ?1");
    readAccount = prepare(ledgerDb,
                          "SELECT flags, debits_pending, debits_posted, credits_pending, "
                          "credits_posted FROM ledger_accounts WHERE currency = ?1 AND id = ?2");
    findTransfer = prepare(ledgerDb,
                           "SELECT kind, debit_account, credit_account, currency, amount, "
                           "pending_id, timeout_ms, expires_at_ms FROM ledger_transfers WHERE id "
                           "= ?1");
    insertTransfer = prepare(ledgerDb,
                             "INSERT INTO ledger_transfers (id, currency, kind, debit_account, "
                             "credit_account, amount, pending_id, timeout_ms, expires_at_ms, "
                             "created_at_ms) VALUES (?1, ?2, 1, ?3, ?4, ?5, NULL, 0, 0, ?6)");
    updateAccount = prepare(ledgerDb,
                            "UPDATE ledger_accounts SET debits_pending = ?3, debits_posted = ?4, "
                            "credits_pending = ?5, credits_posted = ?6 WHERE currency = ?1 AND "
                            "id = ?2");
    storeResult = prepare(payDb, "UPDATE payments_keys SET result = ?2 WHERE key = ?1");
    storePayment = prepare(
        payDb,
        "INSERT INTO payments (id, merchant, currency, settlement, card_txn, authorized, captured, "
        "refunded, settled, state, expires_at_ms, captures, refunds, released) VALUES (?1, 'm1', "
        "?2, ?3, ?4, ?5, ?5, 0, ?6, 3, 0, 1, 0, 0) ON CONFLICT (id) DO UPDATE SET card_txn "
        "= excluded.card_txn, authorized = excluded.authorized, captured = excluded.captured, "
        "refunded = excluded.refunded, settled = excluded.settled, state = excluded.state, "
        "expires_at_ms = excluded.expires_at_ms, captures = excluded.captures, refunds = "
        "excluded.refunds, released = excluded.released");
  }
  ~Naive() {
    for (auto* s : {claimKey, findPayment, readAccount, findTransfer, insertTransfer, updateAccount,
                    storeResult, storePayment}) {
      sqlite3_finalize(s);
    }
    sqlite3_close(payDb);
    if (split) sqlite3_close(ledgerDb);
  }
  KJ_DISALLOW_COPY(Naive);

  // Payments for `seconds`, one at a time; each one's latency in `latency`.
  double run(double seconds, int round, Histogram& latency) {
    auto started = Clock::now();
    auto end = started + std::chrono::duration<double>(seconds);
    uint64_t count = 0;
    auto now = started;
    while (now < end) {
      auto key = "naive-" + std::to_string(round) + "-" + std::to_string(count);
      pay(key, isFx(payments, fxShare));
      auto done = Clock::now();
      latency.record(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(done - now).count()));
      now = done;
      ++count;
    }
    return static_cast<double>(count) / std::chrono::duration<double>(now - started).count();
  }

  // Whether the ledger balances: in each currency posted debits equal posted credits over every
  // account, each account's balance equals a replay of the transfer log, and each account holds
  // what the payments put there (`settled`: what one FX purchase settles). Prints the figures.
  bool audit(const char* name, int64_t settled) {
    auto expected = expectedBalances(payments, fxPayments, settled);
    auto* query =
        prepare(ledgerDb,
                "SELECT debits_pending, debits_posted, credits_pending, credits_posted, "
                "(SELECT COALESCE(SUM(amount), 0) FROM ledger_transfers t WHERE t.kind = 1 AND "
                "t.currency = a.currency AND t.debit_account = a.id), "
                "(SELECT COALESCE(SUM(amount), 0) FROM ledger_transfers t WHERE t.kind = 1 AND "
                "t.currency = a.currency AND t.credit_account = a.id) "
                "FROM ledger_accounts a WHERE currency = ?1 AND id = ?2");
    bool ok = true;
    int64_t sums[2][2] = {};  // per currency: debits, credits
    for (auto& e : expected) {
      sqlite3_bind_text(query, 1, e.currency, -1, SQLITE_STATIC);
      sqlite3_bind_text(query, 2, e.id, -1, SQLITE_STATIC);
      if (sqlite3_step(query) != SQLITE_ROW) {
        kj::throwFatalException(KJ_EXCEPTION(FAILED, "no account", e.id, e.currency));
      }
      int64_t v[6];
      for (int c = 0; c < 6; ++c)
        v[c] = sqlite3_column_int64(query, c);
      sqlite3_reset(query);
      bool fine = v[0] == 0 && v[2] == 0 && v[1] == e.debits && v[3] == e.credits && v[4] == v[1] &&
                  v[5] == v[3];
      int c = e.currency == std::string(CURRENCY) ? 0 : 1;
      sums[c][0] += v[1];
      sums[c][1] += v[3];
      if (!fine) {
        std::printf(
            "%s ledger: %s %s debits %lld (replay %lld, expected %lld), credits %lld (replay "
            "%lld, expected %lld), pending %lld/%lld  <-- FAILED\n",
            name, e.currency, e.id, static_cast<long long>(v[1]), static_cast<long long>(v[4]),
            static_cast<long long>(e.debits), static_cast<long long>(v[3]),
            static_cast<long long>(v[5]), static_cast<long long>(e.credits),
            static_cast<long long>(v[0]), static_cast<long long>(v[2]));
      }
      ok = ok && fine;
    }
    sqlite3_finalize(query);
    for (int c = 0; c < 2; ++c) {
      if (sums[c][0] != sums[c][1]) {
        std::printf("%s ledger: %s debits %lld != credits %lld  <-- FAILED\n", name,
                    c == 0 ? CURRENCY : FX_SETTLEMENT, static_cast<long long>(sums[c][0]),
                    static_cast<long long>(sums[c][1]));
        ok = false;
      }
    }
    std::printf(
        "%s ledger: %llu payments (%llu FX): %s debits %lld credits %lld, %s debits %lld "
        "credits %lld; debits = credits, every balance equal to its replay and to the "
        "payments: %s\n",
        name, static_cast<unsigned long long>(payments),
        static_cast<unsigned long long>(fxPayments), CURRENCY, static_cast<long long>(sums[0][0]),
        static_cast<long long>(sums[0][1]), FX_SETTLEMENT, static_cast<long long>(sums[1][0]),
        static_cast<long long>(sums[1][1]), ok ? "yes" : "NO  <-- FAILED");
    return ok;
  }

  uint64_t payments = 0;
  uint64_t fxPayments = 0;
  // What the last FX payment settled (0 before the first).
  int64_t settledFx = 0;

private:
  bool split;
  uint32_t fxShare;
  plugins::fx::Rate rate;
  sqlite3* payDb = nullptr;
  sqlite3* ledgerDb = nullptr;
  sqlite3_stmt* claimKey = nullptr;
  sqlite3_stmt* findPayment = nullptr;
  sqlite3_stmt* readAccount = nullptr;
  sqlite3_stmt* findTransfer = nullptr;
  sqlite3_stmt* insertTransfer = nullptr;
  sqlite3_stmt* updateAccount = nullptr;
  sqlite3_stmt* storeResult = nullptr;
  sqlite3_stmt* storePayment = nullptr;

  static sqlite3_stmt* prepare(sqlite3* db, const char* sql) {
    sqlite3_stmt* s = nullptr;
    check(sqlite3_prepare_v2(db, sql, -1, &s, nullptr), db, sql);
    return s;
  }
  static void text(sqlite3_stmt* s, int i, const std::string& value) {
    sqlite3_bind_text(s, i, value.c_str(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
  }
  // Steps `s` to the end (reading its rows) and resets it.
  static void step(sqlite3* db, sqlite3_stmt* s) {
    int status;
    while ((status = sqlite3_step(s)) == SQLITE_ROW) {
    }
    check(status, db, "step");
    sqlite3_reset(s);
  }

  // What the FX plugin does for a quote: the amount checked, both currencies looked up in the
  // ISO 4217 table, the conversion in exact decimal arithmetic rounded half-even.
  int64_t convert(int64_t amount) {
    KJ_IF_MAYBE (problem, checkCharge(amount, CURRENCY)) {
      kj::throwFatalException(KJ_EXCEPTION(FAILED, "fx: bad amount", *problem));
    }
    auto& source = KJ_REQUIRE_NONNULL(findCurrency(CURRENCY));
    auto& target = KJ_REQUIRE_NONNULL(findCurrency(FX_SETTLEMENT));
    plugins::fx::ConvertError error;
    KJ_IF_MAYBE (converted,
                 plugins::fx::convert(amount, source.exponent, target.exponent, rate, error)) {
      return *converted;
    }
    KJ_FAIL_REQUIRE("fx: the amount cannot be converted");
  }

  // One posted transfer as the ledger's engine writes it: the id checked, both accounts read,
  // the balances changed within their limits, the row, both balances written back.
  void transfer(const std::string& id, const char* currency, const char* debit, const char* credit,
                int64_t amount, int64_t nowMs) {
    text(findTransfer, 1, id);
    if (sqlite3_step(findTransfer) == SQLITE_ROW) {
      kj::throwFatalException(KJ_EXCEPTION(FAILED, "transfer exists", id));
    }
    sqlite3_reset(findTransfer);
    int64_t balances[2][4] = {};
    bool limited[2] = {};
    const char* accounts[2] = {debit, credit};
    for (int a = 0; a < 2; ++a) {
      sqlite3_bind_text(readAccount, 1, currency, -1, SQLITE_STATIC);
      sqlite3_bind_text(readAccount, 2, accounts[a], -1, SQLITE_STATIC);
      if (sqlite3_step(readAccount) != SQLITE_ROW) {
        kj::throwFatalException(KJ_EXCEPTION(FAILED, "no account", accounts[a]));
      }
      limited[a] = (sqlite3_column_int64(readAccount, 0) & 1) != 0;
      for (int c = 0; c < 4; ++c)
        balances[a][c] = sqlite3_column_int64(readAccount, c + 1);
      sqlite3_reset(readAccount);
    }
    KJ_REQUIRE(!__builtin_add_overflow(balances[0][1], amount, &balances[0][1]) &&
                   !__builtin_add_overflow(balances[1][3], amount, &balances[1][3]),
               "balance overflow");
    for (int a = 0; a < 2; ++a) {
      KJ_REQUIRE(!limited[a] || balances[a][0] + balances[a][1] <= balances[a][3],
                 "debits above credits", accounts[a]);
    }
    text(insertTransfer, 1, id);
    sqlite3_bind_text(insertTransfer, 2, currency, -1, SQLITE_STATIC);
    sqlite3_bind_text(insertTransfer, 3, debit, -1, SQLITE_STATIC);
    sqlite3_bind_text(insertTransfer, 4, credit, -1, SQLITE_STATIC);
    sqlite3_bind_int64(insertTransfer, 5, amount);
    sqlite3_bind_int64(insertTransfer, 6, nowMs);
    step(ledgerDb, insertTransfer);
    for (int a = 0; a < 2; ++a) {
      sqlite3_bind_text(updateAccount, 1, currency, -1, SQLITE_STATIC);
      sqlite3_bind_text(updateAccount, 2, accounts[a], -1, SQLITE_STATIC);
      for (int c = 0; c < 4; ++c)
        sqlite3_bind_int64(updateAccount, c + 3, balances[a][c]);
      step(ledgerDb, updateAccount);
    }
  }

  void pay(const std::string& key, bool fx) {
    int64_t nowMs = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
    auto id = "pay_" + key;
    const char* settlement = fx ? FX_SETTLEMENT : CURRENCY;
    auto request = "purchase|m1|" + std::to_string(AMOUNT) + "|" + CURRENCY + "|" + settlement +
                   "|tok_visa_approve||";
    // Claim (payments).
    exec(payDb, "BEGIN IMMEDIATE");
    text(claimKey, 1, key);
    text(claimKey, 2, request);
    sqlite3_bind_int64(claimKey, 3, nowMs);
    step(payDb, claimKey);
    text(findPayment, 1, id);
    step(payDb, findPayment);
    // FX: the quote, before the charge (as the flow asks fx before its first transfer).
    int64_t settled = fx ? convert(AMOUNT) : AMOUNT;
    // The charge (ledger): to the merchant, or to the FX desk when the merchant settles in
    // another currency.
    if (split) {
      exec(payDb, "COMMIT");
      exec(ledgerDb, "BEGIN IMMEDIATE");
    }
    transfer(id + "/capture/0", CURRENCY, "cards", fx ? "fx" : "merchant:m1", AMOUNT, nowMs);
    // FX: the settlement (ledger), the FX desk to the merchant in the settlement currency; the
    // flow posts it with its own ledger call, so its own transaction when split.
    if (fx) {
      if (split) {
        exec(ledgerDb, "COMMIT");
        exec(ledgerDb, "BEGIN IMMEDIATE");
      }
      transfer(id + "/settle/0", FX_SETTLEMENT, "fx", "merchant:m1", settled, nowMs);
    }
    // The result and the payment row (payments).
    if (split) {
      exec(ledgerDb, "COMMIT");
      exec(payDb, "BEGIN IMMEDIATE");
    }
    // About the size of an encoded approved PaymentResult.
    static const std::string result(96, 'r');
    text(storeResult, 1, key);
    sqlite3_bind_blob(storeResult, 2, result.data(), static_cast<int>(result.size()),
                      SQLITE_STATIC);
    step(payDb, storeResult);
    text(storePayment, 1, id);
    sqlite3_bind_text(storePayment, 2, CURRENCY, -1, SQLITE_STATIC);
    sqlite3_bind_text(storePayment, 3, settlement, -1, SQLITE_STATIC);
    text(storePayment, 4, "card_" + key);
    sqlite3_bind_int64(storePayment, 5, AMOUNT);
    sqlite3_bind_int64(storePayment, 6, settled);
    step(payDb, storePayment);
    exec(payDb, "COMMIT");
    ++payments;
    if (fx) {
      ++fxPayments;
      settledFx = settled;
    }
  }
};

// --- the flow through payhostd
// ---------------------------------------------------------------------

struct Figures {
  double rate = 0;
  double p50Micros = 0;
  double p99Micros = 0;
  uint64_t failed = 0;
  // The servers' CPU (all their processes and threads) per purchase over the run, warm-up and
  // drain included, and its inverse: purchases per server-CPU-second.
  double serverCpuMicros = 0;
  double perCpuSecond = 0;
};

Figures fromHistogram(double rate, const Histogram& h) {
  return Figures{rate, static_cast<double>(h.percentile(50)) / 1e3,
                 static_cast<double>(h.percentile(99)) / 1e3, 0};
}

struct Flow {
  schema::Payments::Client payments;
  schema::Ledger::Client ledger;
  schema::Fx::Client fx;
  // Purchases of AMOUNT in `currency`: `fxShare` percent of them (isFx over `sequence`) settled
  // in `settlement` (through FX when it differs), the others in `currency`.
  kj::StringPtr currency;
  kj::StringPtr settlement;
  uint32_t fxShare;
  uint64_t sequence = 0;
  // Every acknowledged purchase, warm-up included, and those of them settled in `settlement`:
  // the ledger's balances must match.
  uint64_t acknowledged = 0;
  uint64_t acknowledgedFx = 0;
};

Figures measureFlow(kj::AsyncIoContext& io, pid_t pid, Flow& flow, uint32_t inFlight,
                    double seconds, int round, std::string& firstError) {
  double cpuBefore = processCpuMicros(pid);
  uint64_t acknowledgedBefore = flow.acknowledged;
  LoadGenerator generator(io.provider->getTimer());
  ClosedLoopOptions options;
  options.concurrency = inFlight;
  options.duration = static_cast<int64_t>(seconds * 1000) * kj::MILLISECONDS;
  options.warmUp = 300 * kj::MILLISECONDS;
  options.drainTimeout = 30 * kj::SECONDS;
  auto result =
      generator
          .runClosedLoop(
              options,
              [&]() -> kj::Promise<void> {
                auto n = flow.sequence++;
                bool fx = isFx(n, flow.fxShare);
                auto request = flow.payments.purchaseRequest();
                auto r = request.initRequest();
                r.setMerchantId("m1");
                r.initAmount().setMinorUnits(AMOUNT);
                r.getAmount().setCurrency(flow.currency);
                r.setSettlementCurrency(fx ? flow.settlement : flow.currency);
                r.setCardToken("tok_visa_approve");
                r.setIdempotencyKey(kj::str("flow-", round, "-", n));
                return request.send().then(
                    [&flow, fx](capnp::Response<schema::Payments::PurchaseResults>&& out) {
                      auto answer = out.getResult();
                      if (!answer.isApproved() ||
                          answer.getApproved().getState() != schema::TransactionState::CAPTURED) {
                        kj::throwFatalException(
                            KJ_EXCEPTION(FAILED, "purchase not captured", kj::str(answer)));
                      }
                      ++flow.acknowledged;
                      if (fx) ++flow.acknowledgedFx;
                    });
              })
          .wait(io.waitScope);
  KJ_IF_MAYBE (e, result.firstError) {
    if (firstError.empty()) firstError = e->cStr();
  }
  auto figures = fromHistogram(result.callsPerSecond, result.latency);
  figures.failed = result.failed;
  auto purchases = flow.acknowledged - acknowledgedBefore;
  if (purchases > 0) {
    figures.serverCpuMicros = (processCpuMicros(pid) - cpuBefore) / static_cast<double>(purchases);
    figures.perCpuSecond = 1e6 / figures.serverCpuMicros;
  }
  return figures;
}

// --- statistics and output -----------------------------------------------------------------------

struct Spread {
  double median = 0;
  double min = 0;
  double max = 0;
};

Spread spread(std::vector<double> values) {
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  double median = n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  return {median, values.front(), values.back()};
}

template <typename F>
Spread over(const std::vector<Figures>& runs, F field) {
  std::vector<double> values;
  values.reserve(runs.size());
  for (auto& r : runs)
    values.push_back(r.*field);
  return spread(values);
}

void printCase(const char* name, const std::vector<Figures>& runs) {
  auto rate = over(runs, &Figures::rate);
  auto p50 = over(runs, &Figures::p50Micros);
  auto p99 = over(runs, &Figures::p99Micros);
  std::printf("%-9s %8.0f payments/s (%.0f-%.0f)   p50 %8.0f us   p99 %8.0f us\n", name,
              rate.median, rate.min, rate.max, p50.median, p99.median);
}

void jsonCase(std::ofstream& json, const char* name, const std::vector<Figures>& runs) {
  auto rate = over(runs, &Figures::rate);
  json << "    \"" << name << "\": {\"payments_per_s\": " << rate.median
       << ", \"payments_per_s_min\": " << rate.min << ", \"payments_per_s_max\": " << rate.max
       << ", \"p50_us\": " << over(runs, &Figures::p50Micros).median
       << ", \"p99_us\": " << over(runs, &Figures::p99Micros).median;
  if (runs.front().serverCpuMicros > 0) {
    auto perCpu = over(runs, &Figures::perCpuSecond);
    json << ", \"server_cpu_us_per_payment\": " << over(runs, &Figures::serverCpuMicros).median
         << ", \"payments_per_server_cpu_s\": " << perCpu.median
         << ", \"payments_per_server_cpu_s_min\": " << perCpu.min
         << ", \"payments_per_server_cpu_s_max\": " << perCpu.max;
  }
  uint64_t failed = 0;
  for (auto& r : runs)
    failed += r.failed;
  json << ", \"failed\": " << failed << "}";
}

struct Options {
  std::string payhostd;
  std::string plugins;
  std::string dir = "/var/tmp/payhost-flow-bench";
  int rounds = 3;
  double seconds = 3;
  uint32_t inFlight = 64;
  std::string json;
  // "naive" (SQLite directly) or "grpc" (the same services as gRPC processes).
  std::string versus = "naive";
  // --versus naive: the percentage of purchases settled in another currency (FX_SETTLEMENT).
  // 20 by default: an assumed mix, not a measured one (see bench/README.md).
  uint32_t fxShare = 20;
  std::string grpcFlow;
  std::string grpcCard;
  std::string plotData;
};

std::string absolutePath(const std::string& path) {
  return fs::absolute(path).lexically_normal().native();
}

// What `flow.fx` quotes for one purchase in the settlement currency (AMOUNT when it is the same).
int64_t settledPerPurchase(kj::AsyncIoContext& io, Flow& flow) {
  if (flow.currency == flow.settlement) return AMOUNT;
  auto request = flow.fx.quoteRequest();
  request.initSource().setMinorUnits(AMOUNT);
  request.getSource().setCurrency(flow.currency);
  request.setTargetCurrency(flow.settlement);
  auto response = request.send().wait(io.waitScope);
  KJ_REQUIRE(response.getResult().isQuote(), "payments.fx refused a quote");
  return response.getResult().getQuote().getTarget().getMinorUnits();
}

// --- against SQLite directly ---------------------------------------------------------------------

// Whether payhostd's ledgers balance: in both currencies the ledger's own audit (posted and
// pending debits equal credits over every account, every balance equal to a replay of the
// transfer log), and each account of the flow holding what the acknowledged purchases put
// there. Prints the figures.
bool auditFlow(kj::AsyncIoContext& io, Flow& flow, int64_t settled, uint64_t failed) {
  bool ok = true;
  for (auto* currency : {CURRENCY, FX_SETTLEMENT}) {
    auto request = flow.ledger.auditRequest();
    request.setCurrency(currency);
    auto response = request.send().wait(io.waitScope);
    auto report = response.getReport();
    bool fine = report.getDebitsEqualCredits() && report.getMismatches().size() == 0;
    std::printf("payhostd ledger %s: audit of %llu transfers over %u accounts: %s\n", currency,
                static_cast<unsigned long long>(report.getTransfers()), report.getAccounts(),
                fine ? "debits = credits, every balance equal to its replay"
                     : "DOES NOT BALANCE  <-- FAILED");
    for (auto line : report.getMismatches())
      std::printf("  %s\n", line.cStr());
    ok = ok && fine;
  }
  bool held = true;
  for (auto& e : expectedBalances(flow.acknowledged, flow.acknowledgedFx, settled)) {
    auto request = flow.ledger.balanceRequest();
    request.setAccountId(e.id);
    request.setCurrency(e.currency);
    auto response = request.send().wait(io.waitScope);
    auto b = response.getBalance();
    int64_t debits = b.getDebits().getMinorUnits();
    int64_t credits = b.getCredits().getMinorUnits();
    if (debits != e.debits || credits != e.credits || b.getDebitsPending().getMinorUnits() != 0 ||
        b.getCreditsPending().getMinorUnits() != 0) {
      std::printf(
          "payhostd ledger: %s %s debits %lld (expected %lld), credits %lld (expected "
          "%lld)  <-- %s\n",
          e.currency, e.id, static_cast<long long>(debits), static_cast<long long>(e.debits),
          static_cast<long long>(credits), static_cast<long long>(e.credits),
          failed > 0 ? "differs (calls failed)" : "FAILED");
      held = false;
    }
  }
  std::printf(
      "payhostd ledger: %llu acknowledged purchases (%llu FX, %lld %s each): every "
      "account holds what they put there: %s\n",
      static_cast<unsigned long long>(flow.acknowledged),
      static_cast<unsigned long long>(flow.acknowledgedFx), static_cast<long long>(settled),
      FX_SETTLEMENT, held ? "yes" : "NO");
  return ok && held;
}

// Returns whether every purchase succeeded and every ledger balanced.
bool versusNaive(kj::AsyncIoContext& io, pid_t pid, Flow& flow, const Options& options,
                 const std::string& dir) {
  Naive naive1(dir, false, options.fxShare);
  Naive naive3(dir, true, options.fxShare);
  std::printf(
      "payhost-flow-bench: durable purchases of %lld %s, %u%% of them settled in %s (FX quote and "
      "a second ledger transfer) and the rest in %s, through payhostd (payments -> "
      "fraud-screen, card-processor latency 0, fx, ledger; SQLite WAL synchronous=FULL in %s) "
      "beside the same writes into SQLite directly\n%u in flight on 1 connection; %d rounds of "
      "%.1f s per case, interleaved\n\n",
      static_cast<long long>(AMOUNT), CURRENCY, options.fxShare, FX_SETTLEMENT, CURRENCY,
      dir.c_str(), options.inFlight, options.rounds, options.seconds);
  std::fflush(stdout);

  std::vector<Figures> flowRuns, naiveRuns, naive3Runs;
  std::vector<double> ratios;
  std::string firstError;
  uint64_t failed = 0;
  for (int round = 0; round < options.rounds; ++round) {
    Histogram h1, h3;
    naiveRuns.push_back(fromHistogram(naive1.run(options.seconds, round, h1), h1));
    flowRuns.push_back(
        measureFlow(io, pid, flow, options.inFlight, options.seconds, round, firstError));
    naive3Runs.push_back(fromHistogram(naive3.run(options.seconds, round, h3), h3));
    failed += flowRuns.back().failed;
    ratios.push_back(flowRuns.back().rate / naiveRuns.back().rate);
    std::printf(
        "round %d: flow %.0f/s (p50 %.0f us, p99 %.0f us, payhostd CPU %.0f us per purchase, "
        "%llu failed), naive %.0f/s, naive-3 %.0f/s, ratio %.2fx\n",
        round + 1, flowRuns.back().rate, flowRuns.back().p50Micros, flowRuns.back().p99Micros,
        flowRuns.back().serverCpuMicros, static_cast<unsigned long long>(flowRuns.back().failed),
        naiveRuns.back().rate, naive3Runs.back().rate, ratios.back());
    std::fflush(stdout);
  }
  std::printf("\nmedians over rounds (min-max), %u%% FX:\n", options.fxShare);
  printCase("flow", flowRuns);
  std::printf(
      "          payhostd CPU %.0f us per purchase (all threads; 2 cores shared with the bench)\n",
      over(flowRuns, &Figures::serverCpuMicros).median);
  printCase("naive", naiveRuns);
  printCase("naive-3", naive3Runs);
  auto ratio = spread(ratios);
  auto ratio3 = spread([&] {
    std::vector<double> v;
    for (size_t i = 0; i < flowRuns.size(); ++i)
      v.push_back(flowRuns[i].rate / naive3Runs[i].rate);
    return v;
  }());
  std::printf(
      "ratio flow/naive %.2fx (%.2f-%.2f); flow/naive-3 %.2fx (target: at least 5x naive)\n",
      ratio.median, ratio.min, ratio.max, ratio3.median);

  // The settled amount of an FX purchase as payhostd's fx quotes it; the naive side's own
  // conversion must agree.
  auto settled = settledPerPurchase(io, flow);
  bool agreed = true;
  for (auto* naive : {&naive1, &naive3}) {
    if (naive->fxPayments > 0 && naive->settledFx != settled) {
      std::printf("naive conversion %lld %s differs from payhostd's quote %lld  <-- FAILED\n",
                  static_cast<long long>(naive->settledFx), FX_SETTLEMENT,
                  static_cast<long long>(settled));
      agreed = false;
    }
  }
  bool balanced = auditFlow(io, flow, settled, failed);
  bool naiveBalanced = naive1.audit("naive", settled);
  naiveBalanced = naive3.audit("naive-3", settled) && naiveBalanced && agreed;
  if (!firstError.empty()) std::printf("first failure: %s\n", firstError.c_str());

  if (!options.json.empty()) {
    std::ofstream json(options.json);
    json << "{\n  \"benchmark\": \"payment-flow\", \"rounds\": " << options.rounds
         << ", \"seconds\": " << options.seconds << ", \"in_flight\": " << options.inFlight
         << ", \"amount\": " << AMOUNT << ", \"currency\": \"" << CURRENCY
         << "\", \"fx_share\": " << options.fxShare << ", \"fx_settlement\": \"" << FX_SETTLEMENT
         << "\", \"fx_settled\": " << settled << ",\n  \"cases\": {\n";
    jsonCase(json, "flow", flowRuns);
    json << ",\n";
    jsonCase(json, "naive", naiveRuns);
    json << ",\n";
    jsonCase(json, "naive-3", naive3Runs);
    json << "\n  },\n  \"ratio_flow_over_naive\": " << ratio.median
         << ", \"ratio_min\": " << ratio.min << ", \"ratio_max\": " << ratio.max
         << ", \"ratio_flow_over_naive_3\": " << ratio3.median
         << ",\n  \"purchases\": {\"flow\": " << flow.acknowledged
         << ", \"flow_fx\": " << flow.acknowledgedFx << ", \"naive\": " << naive1.payments
         << ", \"naive_fx\": " << naive1.fxPayments << ", \"naive-3\": " << naive3.payments
         << ", \"naive-3_fx\": " << naive3.fxPayments << "},\n  \"flow_failed\": " << failed
         << ", \"ledger_balanced\": " << (balanced ? "true" : "false")
         << ", \"naive_ledgers_balanced\": " << (naiveBalanced ? "true" : "false") << "\n}\n";
  }
  return failed == 0 && balanced && naiveBalanced;
}

// --- against gRPC microservices ------------------------------------------------------------------

#ifdef PAYHOST_BENCH_GRPC

// The merchant's posted credits minus debits in the settlement currency.
int64_t merchantCredits(kj::AsyncIoContext& io, Flow& flow) {
  auto request = flow.ledger.balanceRequest();
  request.setAccountId("merchant:m1");
  request.setCurrency(flow.settlement);
  auto response = request.send().wait(io.waitScope);
  return response.getBalance().getCredits().getMinorUnits() -
         response.getBalance().getDebits().getMinorUnits();
}

// Whether the merchant's ledger balance is what the acknowledged purchases put there; prints it.
bool checkBalance(const char* name, int64_t credits, uint64_t acknowledged, int64_t settled,
                  uint64_t failed) {
  auto expected = static_cast<int64_t>(acknowledged) * settled;
  bool balanced = credits == expected;
  std::printf("%s ledger: merchant credits %lld, acknowledged purchases %llu x %lld = %lld: %s\n",
              name, static_cast<long long>(credits), static_cast<unsigned long long>(acknowledged),
              static_cast<long long>(settled), static_cast<long long>(expected),
              balanced ? "equal" : (failed > 0 ? "differ (calls failed)" : "DIFFER  <-- FAILED"));
  return balanced;
}

// The flow's five services as gRPC processes calling each other (bench/grpc/flow-services.cpp;
// the card service is payhost-bench-grpc-server), their databases in `dir`.
class GrpcServices final {
public:
  // `maxBatch`: requests per durable transaction in the ledger and payments services.
  GrpcServices(kj::AsyncIoContext& io, const Options& options, const std::string& dir,
               const std::string& name, size_t maxBatch)
      : name(name) {
    auto start = [&](const char* service, std::vector<std::string> args) {
      auto log = kj::str(dir, "/", name, "-", service, ".log");
      pid_t pid = startProcess(kj::mv(args), log);
      pids.push_back(pid);
      services.push_back(service);
      auto port =
          waitForPort(io, pid, kj::str(name, " ", service), [&log]() { return portFromLog(log); });
      return "127.0.0.1:" + std::to_string(port);
    };
    auto flowService = [&](const char* service) {
      return std::vector<std::string>{options.grpcFlow, "--service", service, "--listen",
                                      "127.0.0.1:0"};
    };
    auto withDb = [&](const char* service) {
      auto args = flowService(service);
      auto file = dir;
      file.append("/").append(name).append("-").append(service).append(".sqlite");
      args.insert(args.end(), {"--db", file, "--max-batch", std::to_string(maxBatch)});
      return args;
    };
    auto card = start("card", {options.grpcCard, "--listen", "127.0.0.1:0"});
    auto fraud = start("fraud", flowService("fraud"));
    auto fx = start("fx", flowService("fx"));
    auto ledger = start("ledger", withDb("ledger"));
    auto args = withDb("payments");
    args.insert(args.end(), {"--fraud", fraud, "--card", card, "--fx", fx, "--ledger", ledger});
    auto payments = start("payments", kj::mv(args));
    client = kj::heap<GrpcFlowClient>(payments, fx, ledger);
  }
  ~GrpcServices() noexcept(false) {
    for (auto pid : pids) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  KJ_DISALLOW_COPY(GrpcServices);

  // CPU used so far by all the services' processes.
  double cpuMicros() const {
    double sum = 0;
    for (auto pid : pids)
      sum += processCpuMicros(pid);
    return sum;
  }

  Figures measure(uint32_t inFlight, double seconds, int round, std::string& firstError) {
    std::vector<double> before;
    for (auto pid : pids)
      before.push_back(processCpuMicros(pid));
    double cpuBefore = cpuMicros();
    uint64_t acknowledgedBefore = client->acknowledged();
    auto result = client->purchase(what(), name + "-" + std::to_string(round) + "-", inFlight,
                                   std::chrono::milliseconds(300),
                                   std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
    KJ_IF_MAYBE (e, result.firstError) {
      if (firstError.empty()) firstError = e->cStr();
    }
    auto figures = fromHistogram(result.callsPerSecond, result.latency);
    figures.failed = result.failed;
    auto purchases = client->acknowledged() - acknowledgedBefore;
    if (purchases > 0) {
      figures.serverCpuMicros = (cpuMicros() - cpuBefore) / static_cast<double>(purchases);
      figures.perCpuSecond = 1e6 / figures.serverCpuMicros;
      std::vector<double> perService;
      for (size_t i = 0; i < pids.size(); ++i) {
        perService.push_back((processCpuMicros(pids[i]) - before[i]) /
                             static_cast<double>(purchases));
      }
      byService.push_back(kj::mv(perService));
    }
    return figures;
  }

  // Each service's CPU per purchase, median over rounds: "card 310, fraud 250, ...".
  std::string breakdown(bool json) const {
    std::string out;
    for (size_t i = 0; i < services.size(); ++i) {
      std::vector<double> values;
      for (auto& round : byService)
        values.push_back(round[i]);
      char item[64];
      snprintf(item, sizeof(item), json ? "%s\"%s\": %.1f" : "%s%s %.0f", i == 0 ? "" : ", ",
               services[i], spread(values).median);
      out += item;
    }
    return out;
  }

  bool balanced(uint64_t failed) {
    auto settled = client->quote(AMOUNT, CURRENCY, SETTLEMENT);
    return checkBalance(name.c_str(), client->net("merchant:m1", SETTLEMENT),
                        client->acknowledged(), settled, failed);
  }

  // Stops every process with SIGTERM; whether each exited cleanly.
  bool stop() {
    client = nullptr;
    bool clean = true;
    for (auto pid : pids) {
      kill(pid, SIGTERM);
      int status = 0;
      waitpid(pid, &status, 0);
      clean = clean && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    pids.clear();
    return clean;
  }

  static constexpr const char* CURRENCY = "USD";
  static constexpr const char* SETTLEMENT = "EUR";

private:
  std::string name;
  std::vector<pid_t> pids;
  std::vector<const char*> services;
  // Per measured round, each service's CPU per purchase (µs).
  std::vector<std::vector<double>> byService;
  kj::Own<GrpcFlowClient> client;

  static GrpcPurchase what() {
    return GrpcPurchase{"m1", AMOUNT, CURRENCY, SETTLEMENT, "tok_visa_approve"};
  }
};

void printVersus(const char* name, const std::vector<Figures>& runs) {
  auto rate = over(runs, &Figures::rate);
  auto perCpu = over(runs, &Figures::perCpuSecond);
  std::printf("  %-10s %6.0f (%.0f-%.0f) %9.1f %9.1f %10.0f %9.0f (%.0f-%.0f) %llu\n", name,
              rate.median, rate.min, rate.max, over(runs, &Figures::p50Micros).median / 1e3,
              over(runs, &Figures::p99Micros).median / 1e3,
              over(runs, &Figures::serverCpuMicros).median, perCpu.median, perCpu.min, perCpu.max,
              [&] {
                unsigned long long failed = 0;
                for (auto& r : runs)
                  failed += r.failed;
                return failed;
              }());
}

struct Paired {
  Spread perCpu;
  Spread rate;
  Spread p50;
};

Paired paired(const std::vector<Figures>& a, const std::vector<Figures>& b) {
  std::vector<double> perCpu, rate, p50;
  // A round where a side completed nothing has no ratio (and would print inf into the JSON).
  auto add = [](std::vector<double>& to, double x, double y) {
    if (x > 0 && y > 0) to.push_back(x / y);
  };
  for (size_t i = 0; i < a.size(); ++i) {
    add(perCpu, a[i].perCpuSecond, b[i].perCpuSecond);
    add(rate, a[i].rate, b[i].rate);
    add(p50, a[i].p50Micros, b[i].p50Micros);
  }
  return {spread(perCpu), spread(rate), spread(p50)};
}

// Returns whether every purchase succeeded, every ledger balanced and every service stopped
// cleanly.
bool versusGrpc(kj::AsyncIoContext& io, pid_t pid, Flow& flow, const Options& options,
                const std::string& dir) {
  KJ_REQUIRE(!options.grpcFlow.empty() && !options.grpcCard.empty(),
             "--versus grpc needs --grpc-flow and --grpc-card");
  GrpcServices grpc(io, options, dir, "grpc", 1);
  GrpcServices grpcBatch(io, options, dir, "grpc-batch", 512);
  std::printf(
      "payhost-flow-bench --versus grpc: durable purchases of %lld %s settled in %s (fraud "
      "screen, card purchase, FX quote, two ledger transfers; SQLite WAL synchronous=FULL in %s)\n"
      "  payhost     payhostd, one shard: payments, fraud-screen, card-processor, fx, ledger as "
      "plugins; group commit\n"
      "  grpc        the same five services as gRPC processes calling each other (callback API), "
      "one durable transaction per request in ledger and payments\n"
      "  grpc-batch  the same, ledger and payments group-committing what arrives during a commit\n"
      "%u in flight on 1 connection; %d rounds of %.1f s per case, interleaved (order reversed "
      "every other round); server CPU is every server process, all threads, from /proc\n\n",
      static_cast<long long>(AMOUNT), flow.currency.cStr(), flow.settlement.cStr(), dir.c_str(),
      options.inFlight, options.rounds, options.seconds);
  std::fflush(stdout);

  std::vector<Figures> payhostRuns, grpcRuns, batchRuns;
  std::string firstError;
  for (int round = 0; round < options.rounds; ++round) {
    auto runPayhost = [&]() {
      payhostRuns.push_back(
          measureFlow(io, pid, flow, options.inFlight, options.seconds, round, firstError));
    };
    auto runGrpc = [&]() {
      grpcRuns.push_back(grpc.measure(options.inFlight, options.seconds, round, firstError));
    };
    auto runBatch = [&]() {
      batchRuns.push_back(grpcBatch.measure(options.inFlight, options.seconds, round, firstError));
    };
    if (round % 2 == 0) {
      runPayhost();
      runGrpc();
      runBatch();
    } else {
      runBatch();
      runGrpc();
      runPayhost();
    }
    auto& p = payhostRuns.back();
    auto& g = grpcRuns.back();
    auto& b = batchRuns.back();
    std::printf(
        "round %d: payhost %.0f/s %.0f us CPU; grpc %.0f/s %.0f us CPU; grpc-batch %.0f/s %.0f us "
        "CPU; payments per server-CPU-s payhost/grpc %.2fx, payhost/grpc-batch %.2fx\n",
        round + 1, p.rate, p.serverCpuMicros, g.rate, g.serverCpuMicros, b.rate, b.serverCpuMicros,
        p.perCpuSecond / g.perCpuSecond, p.perCpuSecond / b.perCpuSecond);
    std::fflush(stdout);
  }

  std::printf("\nmedians over rounds (min-max):\n  %-10s %-18s %9s %9s %10s %24s %s\n", "case",
              "payments/s", "p50 ms", "p99 ms", "CPU us/pay", "payments per server-CPU-s",
              "failed");
  printVersus("payhost", payhostRuns);
  printVersus("grpc", grpcRuns);
  printVersus("grpc-batch", batchRuns);
  std::printf("  server CPU us per payment by service: grpc %s; grpc-batch %s\n",
              grpc.breakdown(false).c_str(), grpcBatch.breakdown(false).c_str());
  auto vsGrpc = paired(payhostRuns, grpcRuns);
  auto vsBatch = paired(payhostRuns, batchRuns);
  for (auto [name, r] :
       {std::pair<const char*, Paired&>{"grpc", vsGrpc}, {"grpc-batch", vsBatch}}) {
    std::printf(
        "  payhost/%-10s payments per server-CPU-s %.2fx (%.2f-%.2f), payments/s %.2fx "
        "(%.2f-%.2f), p50 %.2fx\n",
        name, r.perCpu.median, r.perCpu.min, r.perCpu.max, r.rate.median, r.rate.min, r.rate.max,
        r.p50.median);
  }
  std::printf(
      "target: payhost at least 5x the payments per server-CPU-s of the gRPC services: "
      "%.2fx against grpc (%s), %.2fx against grpc-batch (%s)\n",
      vsGrpc.perCpu.median, vsGrpc.perCpu.median >= 5 ? "met" : "MISSED", vsBatch.perCpu.median,
      vsBatch.perCpu.median >= 5 ? "met" : "MISSED");

  uint64_t failed = 0;
  for (auto* runs : {&payhostRuns, &grpcRuns, &batchRuns}) {
    for (auto& r : *runs)
      failed += r.failed;
  }
  bool balanced = checkBalance("payhost", merchantCredits(io, flow), flow.acknowledged,
                               settledPerPurchase(io, flow), failed);
  balanced = grpc.balanced(failed) && balanced;
  balanced = grpcBatch.balanced(failed) && balanced;
  if (!firstError.empty()) std::printf("first failure: %s\n", firstError.c_str());
  bool stopped = grpc.stop();
  stopped = grpcBatch.stop() && stopped;
  if (!stopped) std::printf("a gRPC service did not stop cleanly  <-- FAILED\n");

  if (!options.json.empty()) {
    std::ofstream json(options.json);
    json << "{\n  \"benchmark\": \"payment-flow-vs-grpc\", \"rounds\": " << options.rounds
         << ", \"seconds\": " << options.seconds << ", \"in_flight\": " << options.inFlight
         << ", \"amount\": " << AMOUNT << ", \"currency\": \"" << flow.currency.cStr()
         << "\", \"settlement\": \"" << flow.settlement.cStr() << "\",\n  \"cases\": {\n";
    jsonCase(json, "payhost", payhostRuns);
    json << ",\n";
    jsonCase(json, "grpc", grpcRuns);
    json << ",\n";
    jsonCase(json, "grpc-batch", batchRuns);
    json << "\n  },\n  \"server_cpu_us_per_payment_by_service\": {\"grpc\": {"
         << grpc.breakdown(true) << "}, \"grpc-batch\": {" << grpcBatch.breakdown(true)
         << "}},\n  \"ratios\": {";
    bool first = true;
    for (auto [name, r] : {std::pair<const char*, Paired&>{"payhost/grpc", vsGrpc},
                           {"payhost/grpc-batch", vsBatch}}) {
      json << (first ? "" : ", ") << "\"" << name
           << "\": {\"payments_per_server_cpu_s\": " << r.perCpu.median
           << ", \"payments_per_server_cpu_s_min\": " << r.perCpu.min
           << ", \"payments_per_server_cpu_s_max\": " << r.perCpu.max
           << ", \"payments_per_s\": " << r.rate.median << ", \"p50\": " << r.p50.median << "}";
      first = false;
    }
    json << "},\n  \"target_payments_per_server_cpu_s\": 5, \"failed\": " << failed
         << ", \"ledger_balanced\": " << (balanced ? "true" : "false") << "\n}\n";
  }
  if (!options.plotData.empty()) {
    // One table for the plot's payment-flow panel: a row per figure, a column per case.
    std::ofstream tsv(options.plotData + "/flow.tsv");
    tsv << "figure\tpayhost\tgrpc\tgrpc-batch\n";
    auto row = [&](const char* label, auto field, double scale) {
      tsv << "\"" << label << "\"";
      for (auto* runs : {&payhostRuns, &grpcRuns, &batchRuns})
        tsv << "\t" << over(*runs, field).median * scale;
      tsv << "\n";
    };
    row("payments/s", &Figures::rate, 1);
    row("payments per server-CPU-s", &Figures::perCpuSecond, 1);
    row("server CPU us per payment", &Figures::serverCpuMicros, 1);
    row("p50 ms", &Figures::p50Micros, 1e-3);
    row("p99 ms", &Figures::p99Micros, 1e-3);
  }
  return failed == 0 && balanced && stopped;
}

#endif  // PAYHOST_BENCH_GRPC

int runBenchmark(const Options& options) {
  auto plugin = [&](const char* name) {
    auto path = absolutePath(options.plugins + "/" + name + "/" + name + ".so");
    KJ_REQUIRE(fs::exists(path), "plugin not built", path);
    return path;
  };
  bool grpcMode = options.versus == "grpc";
  KJ_REQUIRE(grpcMode || options.versus == "naive", "--versus is naive or grpc",
             options.versus.c_str());
  KJ_REQUIRE(options.fxShare <= 100, "--fx-share is a percentage, 0 to 100", options.fxShare);
#ifndef PAYHOST_BENCH_GRPC
  KJ_REQUIRE(!grpcMode, "built without gRPC (libgrpc++-dev): --versus grpc is not available");
#endif
  fs::remove_all(options.dir);
  fs::create_directories(options.dir);
  auto dir = absolutePath(options.dir);
  auto configPath = dir + "/payhostd.toml";
  auto adminSocket = kj::str(dir, "/admin.sock");
  auto logPath = kj::str(dir, "/payhostd.log");
  {
    // As payments-test: one shard, the five flow plugins, two SQLite databases in `dir`.
    std::ofstream config(configPath);
    config << "[host]\nshards = 1\nlog_level = \"warning\"\ndata_dir = \"" << dir << "/data\"\n"
           << "[listen]\ntcp = [{ address = \"127.0.0.1:0\", insecure = true }]\n"
           << "[[access]]\nidentity = \"anonymous\"\nservices = [\"*\"]\n"
           << "[admin]\nsocket = \"" << adminSocket.cStr() << "\"\n"
           << "[security]\nallow_unsigned = true\n"
           << "[workers]\nmin_threads = 2\nmax_threads = 4\n"
           << "[databases.ledger]\ndriver = \"sqlite\"\nmax_connections = 2\n"
           << "lease_wait_ms = 10000\n"
           << "[databases.payments]\ndriver = \"sqlite\"\nmax_connections = 2\n"
           << "lease_wait_ms = 10000\n"
           << "[[plugin]]\npath = \"" << plugin("card-processor")
           << "\"\n[plugin.config]\nlatency_ms = 0\n"
           << "[[plugin]]\npath = \"" << plugin("fraud-screen") << "\"\n"
           << "[plugin.config.velocity]\ncard_limit = 1000000\nmerchant_limit = 1000000\n"
           << "[[plugin]]\npath = \"" << plugin("fx") << "\"\n[plugin.config.rates]\n"
           << CURRENCY << "_" << FX_SETTLEMENT << " = \"" << RATE << "\"\nUSD_EUR = \"0.9223\"\n"
           << "[[plugin]]\npath = \"" << plugin("ledger") << "\"\ndatabases = [\"ledger\"]\n"
           << "[[plugin]]\npath = \"" << plugin("payments") << "\"\ndatabases = [\"payments\"]\n";
  }
  fs::create_directories(dir + "/data");
  auto io = kj::setupAsyncIo();
  pid_t pid = startProcess({options.payhostd, "--config", configPath}, logPath);
  KJ_DEFER(if (pid > 0) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  });
  uint16_t port = waitForPort(io, pid, "payhostd", [&]() { return payhostdPort(io, adminSocket); });
  auto address =
      io.provider->getNetwork().parseAddress(kj::str("127.0.0.1:", port)).wait(io.waitScope);
  auto connection = address->connect().wait(io.waitScope);
  capnp::TwoPartyClient client(*connection);
  auto gateway = client.bootstrap().castAs<schema::Gateway>();
  auto service = [&](const char* name) {
    auto request = gateway.getServiceRequest();
    request.setName(name);
    return request.send().getService();
  };
  // Against gRPC every purchase goes through FX (USD charged, EUR settled), so every service of
  // the flow is called; against SQLite directly they are in EUR, `--fx-share` percent of them
  // settled in USD, as the naive writes are.
  Flow flow{service("payments.payments").castAs<schema::Payments>(),
            service("payments.ledger").castAs<schema::Ledger>(),
            service("payments.fx").castAs<schema::Fx>(),
            grpcMode ? "USD" : CURRENCY,
            grpcMode ? "EUR" : FX_SETTLEMENT,
            grpcMode ? 100 : options.fxShare};

  bool ok = false;
  if (grpcMode) {
#ifdef PAYHOST_BENCH_GRPC
    ok = versusGrpc(io, pid, flow, options, dir);
#endif
  } else {
    ok = versusNaive(io, pid, flow, options, dir);
  }

  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  pid = 0;
  // A clean stop (exit 0 on SIGTERM) is part of the run: under sanitizers an error or a leak
  // makes it exit 1. Its log is shown then, as the directory is removed.
  bool stopped = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!stopped) {
    std::printf("payhostd did not stop cleanly (status %d)  <-- FAILED; its log:\n", status);
    std::ifstream log(logPath.cStr());
    std::string line;
    while (std::getline(log, line))
      std::printf("  %s\n", line.c_str());
  }
  fs::remove_all(options.dir);
  return ok && stopped ? 0 : 1;
}

}  // namespace
}  // namespace payhost::bench

int main(int argc, char** argv) {
  payhost::bench::Options options;
  CLI::App app{
      "payhost-flow-bench: durable payments through payhostd vs SQLite directly or vs "
      "the same services as gRPC processes"};
  app.add_option("--payhostd", options.payhostd, "payhostd executable")->required();
  app.add_option("--plugins", options.plugins,
                 "the build's plugins directory (card-processor/card-processor.so, ...)")
      ->required();
  app.add_option("--dir", options.dir, "directory for the SQLite files (a real disk, not tmpfs)");
  app.add_option("--rounds", options.rounds, "interleaved rounds");
  app.add_option("--seconds", options.seconds, "seconds per case per round");
  app.add_option("--in-flight", options.inFlight, "purchases in flight through payhostd");
  app.add_option("--json", options.json, "write the results as JSON here");
  app.add_option("--versus", options.versus,
                 "naive: SQLite directly (default); grpc: the same services as gRPC processes");
  app.add_option("--grpc-flow", options.grpcFlow,
                 "--versus grpc: path of payhost-bench-grpc-flow (bench/grpc)");
  app.add_option("--grpc-card", options.grpcCard,
                 "--versus grpc: path of payhost-bench-grpc-server (the card service)");
  app.add_option("--plot-data", options.plotData,
                 "--versus grpc: write flow.tsv for bench/plot.gp into this folder");
  auto* fxShare = app.add_option(
      "--fx-share", options.fxShare,
      "--versus naive: percent of purchases (EUR) settled in USD through FX, 0 to 100 "
      "(default 20; 0: all settled in EUR)");
  fxShare->check(CLI::Range(0, 100));
  CLI11_PARSE(app, argc, argv);
  if (options.versus == "grpc" && fxShare->count() > 0) {
    std::fprintf(stderr,
                 "--fx-share is for --versus naive; against gRPC every purchase goes through FX\n");
    return 2;
  }
  return payhost::bench::runBenchmark(options);
}
