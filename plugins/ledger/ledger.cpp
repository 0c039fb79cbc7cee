// The ledger plugin: serves `payhost::schema::Ledger` as "payments.ledger" over the database pool
// named by its config (`database`, default "ledger"). This file is the Cap'n Proto glue; the
// rules are in engine.h. Writes from one shard are committed together (group commit: every
// request that arrives while a transaction commits goes into the next one) and answered only
// once their transaction is durable.

#include <payhost/context.h>
#include <payhost/group-commit.h>
#include <payhost/log.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>

#include <kj/debug.h>
#include <kj/refcount.h>
#include <kj/vector.h>

#include <cstdint>

#include "engine.h"

namespace payhost::plugins::ledger {
namespace {

namespace schema = payhost::schema;

constexpr kj::StringPtr SERVICE_NAME = "payments.ledger"_kj;
constexpr int64_t MAX_SWEEP_MS = 3'600'000;

kj::Array<Outcome> applyOnSqlite(SqlTransaction& tx, kj::ArrayPtr<const Operation> operations) {
  return applyBatch(tx, SqlDialect::SQLITE, operations);
}

kj::Array<Outcome> applyOnPostgres(SqlTransaction& tx, kj::ArrayPtr<const Operation> operations) {
  return applyBatch(tx, SqlDialect::POSTGRESQL, operations);
}

using Commits = GroupCommit<Operation, Outcome>;

Kind fromSchema(schema::TransferKind kind) {
  switch (kind) {
    case schema::TransferKind::UNSPECIFIED:
    case schema::TransferKind::POSTED:
      return Kind::POSTED;
    case schema::TransferKind::PENDING:
      return Kind::PENDING;
    case schema::TransferKind::POST_PENDING:
      return Kind::POST_PENDING;
    case schema::TransferKind::VOID_PENDING:
      return Kind::VOID_PENDING;
    case schema::TransferKind::EXPIRE_PENDING:
      return Kind::EXPIRE_PENDING;
  }
  // An enumerant this version does not know: refused by the engine's shape check.
  return Kind::EXPIRE_PENDING;
}

schema::RejectCode toSchema(Reject code) {
  switch (code) {
    case Reject::INVALID_REQUEST:
      return schema::RejectCode::INVALID_REQUEST;
    case Reject::IDEMPOTENCY_CONFLICT:
      return schema::RejectCode::IDEMPOTENCY_CONFLICT;
    case Reject::INVALID_STATE:
      return schema::RejectCode::INVALID_STATE;
    case Reject::UNKNOWN_TRANSACTION:
      return schema::RejectCode::UNKNOWN_TRANSACTION;
    case Reject::EXCEEDS_LIMIT:
      return schema::RejectCode::AMOUNT_EXCEEDS_AVAILABLE;
    case Reject::CURRENCY_MISMATCH:
      return schema::RejectCode::CURRENCY_MISMATCH;
  }
  KJ_UNREACHABLE;
}

Transfer fromSchema(schema::TransferRequest::Reader request) {
  return Transfer{kj::str(request.getTransferId()),    kj::str(request.getDebitAccount()),
                  kj::str(request.getCreditAccount()), kj::str(request.getAmount().getCurrency()),
                  request.getAmount().getMinorUnits(), fromSchema(request.getKind()),
                  kj::str(request.getPendingId()),     request.getTimeoutMs()};
}

void fill(schema::LedgerResult::Builder builder, const Outcome& outcome) {
  if (outcome.ok) {
    builder.setPosted(outcome.id);
  } else {
    auto rejected = builder.initRejected();
    rejected.setCode(toSchema(outcome.code));
    rejected.setMessage(outcome.message);
  }
  builder.setReplayed(outcome.replayed);
}

void fill(schema::Balance::Builder builder, const Balance& b) {
  builder.setAccountId(b.id);
  builder.setExists(true);
  auto money = [&](schema::Money::Builder m, int64_t value) {
    m.setMinorUnits(value);
    m.setCurrency(b.currency);
  };
  money(builder.initDebits(), b.debitsPosted);
  money(builder.initCredits(), b.creditsPosted);
  money(builder.initDebitsPending(), b.debitsPending);
  money(builder.initCreditsPending(), b.creditsPending);
  auto flags = builder.initFlags();
  flags.setDebitsMustNotExceedCredits(b.flags.debitsMustNotExceedCredits);
  flags.setCreditsMustNotExceedDebits(b.flags.creditsMustNotExceedDebits);
}

// What one instance shares with its servers; the instance detaches on destruction (servers may
// be released after it) and later calls fail DISCONNECTED. Shard-local.
class Shard final : public kj::Refcounted {
public:
  Shard(Context& context, Database& database, size_t maxBatch)
      : context_(context),
        database_(database),
        commits_(database,
                 database.dialect() == SqlDialect::POSTGRESQL ? &applyOnPostgres : &applyOnSqlite,
                 maxBatch) {}

  Context& context() {
    check();
    return context_;
  }
  Database& database() {
    check();
    return database_;
  }

  kj::Promise<Outcome> submit(Operation operation) {
    operation.nowMs = nowMs();
    return commits_.submit(kj::mv(operation));
  }

  int64_t nowMs() { return (context().clock().now() - kj::UNIX_EPOCH) / kj::MILLISECONDS; }

  void detach() { detached = true; }
  uint64_t commitCount() const { return commits_.commits(); }

private:
  void check() {
    if (detached) {
      kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED, "the ledger instance has been shut down"));
    }
  }

  Context& context_;
  Database& database_;
  Commits commits_;
  bool detached = false;
};

class LedgerServer final : public schema::Ledger::Server {
public:
  explicit LedgerServer(kj::Own<Shard> shard) : shard(kj::mv(shard)) {}

protected:
  kj::Promise<void> transfer(TransferContext call) override {
    Operation operation;
    auto transfers = kj::heapArrayBuilder<Transfer>(1);
    transfers.add(fromSchema(call.getParams().getRequest()));
    operation.transfers = transfers.finish();
    return shard->submit(kj::mv(operation)).then([call](Outcome outcome) mutable {
      fill(call.getResults().initResult(), outcome);
    });
  }

  kj::Promise<void> transferAll(TransferAllContext call) override {
    auto requests = call.getParams().getRequests();
    KJ_REQUIRE(requests.size() <= 64, "at most 64 linked transfers", requests.size());
    Operation operation;
    auto transfers = kj::heapArrayBuilder<Transfer>(requests.size());
    for (auto request : requests)
      transfers.add(fromSchema(request));
    operation.transfers = transfers.finish();
    return shard->submit(kj::mv(operation)).then([call](Outcome outcome) mutable {
      fill(call.getResults().initResult(), outcome);
    });
  }

  kj::Promise<void> createAccount(CreateAccountContext call) override {
    auto request = call.getParams().getRequest();
    Operation operation;
    operation.type = Operation::Type::CREATE_ACCOUNT;
    operation.account.id = kj::str(request.getAccountId());
    operation.account.currency = kj::str(request.getCurrency());
    operation.account.flags.debitsMustNotExceedCredits =
        request.getFlags().getDebitsMustNotExceedCredits();
    operation.account.flags.creditsMustNotExceedDebits =
        request.getFlags().getCreditsMustNotExceedDebits();
    return shard->submit(kj::mv(operation)).then([call](Outcome outcome) mutable {
      fill(call.getResults().initResult(), outcome);
    });
  }

  kj::Promise<void> expire(ExpireContext call) override {
    Operation operation;
    operation.type = Operation::Type::EXPIRE;
    return shard->submit(kj::mv(operation)).then([call](Outcome outcome) mutable {
      call.getResults().setExpired(outcome.expired);
    });
  }

  kj::Promise<void> balance(BalanceContext call) override {
    auto params = call.getParams();
    auto id = kj::str(params.getAccountId());
    auto currency = kj::str(params.getCurrency());
    return shard->database()
        .transaction([id = kj::mv(id), currency = kj::mv(currency)](SqlTransaction& tx) {
          return loadBalance(tx, id, currency);
        })
        .then([call, id = kj::str(params.getAccountId()),
               currency = kj::str(params.getCurrency())](kj::Maybe<Balance> found) mutable {
          auto out = call.getResults().initBalance();
          KJ_IF_MAYBE (b, found) {
            fill(out, *b);
          } else {
            out.setAccountId(id);
            out.setExists(false);
            for (auto m : {out.initDebits(), out.initCredits(), out.initDebitsPending(),
                           out.initCreditsPending()}) {
              m.setCurrency(currency);
            }
          }
        });
  }

  kj::Promise<void> balances(BalancesContext call) override {
    auto currency = kj::str(call.getParams().getCurrency());
    return shard->database()
        .transaction([currency = kj::mv(currency)](SqlTransaction& tx) {
          return loadBalances(tx, currency);
        })
        .then([call](kj::Array<Balance> all) mutable {
          auto out = call.getResults().initBalances(all.size());
          for (auto i : kj::indices(all))
            fill(out[i], all[i]);
        });
  }

  kj::Promise<void> audit(AuditContext call) override {
    auto currency = kj::str(call.getParams().getCurrency());
    return shard->database()
        .transaction([currency = kj::mv(currency)](SqlTransaction& tx) {
          return ledger::audit(tx, currency);
        })
        .then([call](Audit report) mutable {
          auto out = call.getResults().initReport();
          out.setCurrency(report.currency);
          out.setTransfers(report.transfers);
          out.setAccounts(report.accounts);
          out.setDebitsEqualCredits(report.debitsEqualCredits);
          auto lines = out.initMismatches(report.mismatches.size());
          for (auto i : kj::indices(report.mismatches))
            lines.set(i, report.mismatches[i]);
        });
  }

private:
  kj::Own<Shard> shard;
};

int64_t configInteger(const Config& config, kj::StringPtr key, int64_t defaultValue, int64_t min,
                      int64_t max) {
  int64_t value = config.integer(key, defaultValue);
  KJ_REQUIRE(value >= min && value <= max, "ledger config value out of range", key, value, min,
             max);
  return value;
}

class LedgerPlugin final : public Plugin {
public:
  explicit LedgerPlugin(Context& context)
      : context(context),
        database(context.sql(context.config().string("database", "ledger"))),
        sweep(configInteger(context.config(), "expiry_sweep_ms", 1000, 0, MAX_SWEEP_MS) *
              kj::MILLISECONDS),
        shard(kj::refcounted<Shard>(
            context, database,
            static_cast<size_t>(configInteger(context.config(), "max_batch", 512, 1, 65536)))),
        tasks(errors) {}
  ~LedgerPlugin() noexcept(false) override { shard->detach(); }
  KJ_DISALLOW_COPY(LedgerPlugin);

  capnp::Capability::Client service(kj::StringPtr name) override {
    KJ_REQUIRE(name == SERVICE_NAME, "ledger provides only payments.ledger", name);
    return serve<LedgerServer>(kj::addRef(*shard));
  }

  kj::Promise<void> ready() override {
    auto dialect = database.dialect();
    auto create = [dialect](SqlTransaction& tx) { createSchema(tx, dialect); };
    // Shards create the tables at the same time; on PostgreSQL one may lose a race on the
    // catalog and succeeds on a second try.
    return database.transaction(create)
        .catch_([this, create](kj::Exception&&) { return database.transaction(create); })
        .then([this]() {
          if (context.shardIndex() == 0 && sweep > 0 * kj::SECONDS) tasks.add(sweepLoop());
        });
  }

private:
  class Errors final : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& exception) override {
      KJ_LOG(ERROR, "ledger expiry sweep stopped", exception);
    }
  };

  // Expires overdue pending transfers on this shard's timer; a failed sweep (e.g. the pool is
  // busy) is logged and the next one tries again.
  kj::Promise<void> sweepLoop() {
    return context.clock().timer().afterDelay(sweep).then([this]() {
      Operation operation;
      operation.type = Operation::Type::EXPIRE;
      return shard->submit(kj::mv(operation))
          .then(
              [this](Outcome outcome) {
                if (outcome.expired > 0) {
                  auto count = kj::str(outcome.expired);
                  const LogField fields[] = {{"expired", count}};
                  context.log().write(LogLevel::INFO, "ledger.expired", fields);
                }
              },
              [this](kj::Exception&& e) {
                auto reason = kj::str(e.getDescription());
                const LogField fields[] = {{"reason", reason}};
                context.log().write(LogLevel::WARNING, "ledger.sweep_failed", fields);
              })
          .then([this]() { return sweepLoop(); });
    });
  }

  Context& context;
  Database& database;
  kj::Duration sweep;
  kj::Own<Shard> shard;
  Errors errors;
  kj::TaskSet tasks;
};

}  // namespace
}  // namespace payhost::plugins::ledger

PAYHOST_PLUGIN(payhost::plugins::ledger::LedgerPlugin, "ledger", "1.0.0",
               PAYHOST_SERVICE("payments.ledger", payhost::schema::Ledger));
