// The card-processor plugin: serves `payhost::schema::CardProcessor` as "payments.card" from a
// simulated issuer (issuer.h) that all the instances (shards) share (shared-issuer.h). This file
// is only the Cap'n Proto glue: it reads the config, converts requests and results, applies the
// configured latency and the slow card's delay on the shard's timer, and writes one log record
// per operation.

#include <payhost/context.h>
#include <payhost/log.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>

#include <kj/debug.h>
#include <kj/refcount.h>
#include <kj/vector.h>

#include <cstdint>
#include <limits>

#include "issuer.h"
#include "shared-issuer.h"

namespace payhost::plugins::card {
namespace {

namespace schema = payhost::schema;

constexpr kj::StringPtr SERVICE_NAME = "payments.card"_kj;

// Bounds on the config: beyond them a kj::Duration (int64 nanoseconds) could overflow, and no
// sensible test setup needs more.
constexpr int64_t MAX_DELAY_MS = 3'600'000;
constexpr int64_t MAX_AUTH_WINDOW_S = int64_t{10} * 366 * 24 * 3600;

// ---------------------------------------------------------------------------------------------
// Conversions to the schema

schema::TransactionState toSchema(TransactionState state) {
  switch (state) {
    case TransactionState::AUTHORIZED:
      return schema::TransactionState::AUTHORIZED;
    case TransactionState::PARTIALLY_CAPTURED:
      return schema::TransactionState::PARTIALLY_CAPTURED;
    case TransactionState::CAPTURED:
      return schema::TransactionState::CAPTURED;
    case TransactionState::VOIDED:
      return schema::TransactionState::VOIDED;
    case TransactionState::PARTIALLY_REFUNDED:
      return schema::TransactionState::PARTIALLY_REFUNDED;
    case TransactionState::REFUNDED:
      return schema::TransactionState::REFUNDED;
    case TransactionState::EXPIRED:
      return schema::TransactionState::EXPIRED;
    case TransactionState::FAILED:
      return schema::TransactionState::FAILED;
  }
  KJ_UNREACHABLE;
}

schema::DeclineCode toSchema(DeclineCode code) {
  switch (code) {
    case DeclineCode::DO_NOT_HONOR:
      return schema::DeclineCode::DO_NOT_HONOR;
    case DeclineCode::INSUFFICIENT_FUNDS:
      return schema::DeclineCode::INSUFFICIENT_FUNDS;
    case DeclineCode::STOLEN_CARD:
      return schema::DeclineCode::STOLEN_CARD;
    case DeclineCode::EXPIRED_CARD:
      return schema::DeclineCode::EXPIRED_CARD;
    case DeclineCode::AMOUNT_LIMIT_EXCEEDED:
      return schema::DeclineCode::AMOUNT_LIMIT_EXCEEDED;
  }
  KJ_UNREACHABLE;
}

schema::Advice toSchema(Advice advice) {
  switch (advice) {
    case Advice::DO_NOT_RETRY:
      return schema::Advice::DO_NOT_RETRY;
    case Advice::RETRY_LATER:
      return schema::Advice::RETRY_LATER;
    case Advice::CONTACT_ISSUER:
      return schema::Advice::CONTACT_ISSUER;
  }
  KJ_UNREACHABLE;
}

schema::RejectCode toSchema(RejectCode code) {
  switch (code) {
    case RejectCode::INVALID_REQUEST:
      return schema::RejectCode::INVALID_REQUEST;
    case RejectCode::IDEMPOTENCY_CONFLICT:
      return schema::RejectCode::IDEMPOTENCY_CONFLICT;
    case RejectCode::INVALID_STATE:
      return schema::RejectCode::INVALID_STATE;
    case RejectCode::UNKNOWN_TRANSACTION:
      return schema::RejectCode::UNKNOWN_TRANSACTION;
    case RejectCode::AMOUNT_EXCEEDS_AVAILABLE:
      return schema::RejectCode::AMOUNT_EXCEEDS_AVAILABLE;
    case RejectCode::CURRENCY_MISMATCH:
      return schema::RejectCode::CURRENCY_MISMATCH;
  }
  KJ_UNREACHABLE;
}

void fill(schema::PaymentResult::Builder builder, const Result& result) {
  KJ_SWITCH_ONEOF(result) {
    KJ_CASE_ONEOF(approval, Approval) {
      auto out = builder.initApproved();
      out.setTransactionId(approval.transactionId);
      out.setAuthCode(approval.authCode);
      auto amount = out.initAmount();
      amount.setMinorUnits(approval.amount.minorUnits);
      amount.setCurrency(approval.amount.currency);
      out.setState(toSchema(approval.state));
    }
    KJ_CASE_ONEOF(decline, Decline) {
      auto out = builder.initDeclined();
      out.setCode(toSchema(decline.code));
      out.setReason(decline.reason);
      out.setAdvice(toSchema(decline.advice));
      out.setTransactionId(decline.transactionId);
    }
    KJ_CASE_ONEOF(rejection, Rejection) {
      auto out = builder.initRejected();
      out.setCode(toSchema(rejection.code));
      out.setMessage(rejection.message);
    }
    KJ_CASE_ONEOF(unknown, Unknown) {
      builder.setUnknown(unknown.transactionId);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Logging

kj::StringPtr currencyForLog(kj::StringPtr currency) {
  return isValidCurrency(currency) ? currency : "[invalid]"_kj;
}

// One record per operation: the request's loggable fields (already made safe by the caller:
// tokens only through tokenForLog), then what happened. Transaction ids are logged only when
// the issuer issued them, since a caller's unknown id is arbitrary text.
void logOutcome(Logger& log, kj::StringPtr event, kj::ArrayPtr<const LogField> request,
                const Outcome& outcome) {
  if (!log.enabled(LogLevel::INFO)) return;
  kj::Vector<LogField> fields(request.size() + 6);
  fields.addAll(request);
  KJ_IF_MAYBE (id, outcome.transactionId) {
    fields.add(LogField{"transaction", *id});
  }
  KJ_SWITCH_ONEOF(outcome.result) {
    KJ_CASE_ONEOF(approval, Approval) {
      fields.add(LogField{"outcome", "approved"});
      fields.add(LogField{"state", nameOf(approval.state)});
    }
    KJ_CASE_ONEOF(decline, Decline) {
      fields.add(LogField{"outcome", "declined"});
      fields.add(LogField{"code", nameOf(decline.code)});
      fields.add(LogField{"advice", nameOf(decline.advice)});
    }
    KJ_CASE_ONEOF(rejection, Rejection) {
      fields.add(LogField{"outcome", "rejected"});
      fields.add(LogField{"code", nameOf(rejection.code)});
    }
    KJ_CASE_ONEOF(unknown, Unknown) {
      fields.add(LogField{"outcome", "unknown"});
    }
  }
  kj::String delay;
  if (outcome.delay > 0 * kj::SECONDS) {
    delay = kj::str(outcome.delay / kj::MILLISECONDS);
    fields.add(LogField{"delay_ms", delay});
  }
  if (outcome.replayed) fields.add(LogField{"replayed", "true"});
  log.write(LogLevel::INFO, event, fields.asPtr());
}

// ---------------------------------------------------------------------------------------------
// The instance and its servers

// What one plugin instance shares with the servers it hands out: the issuer all shards share,
// and this shard's context. The host promises that the context outlives the instance, not the
// servers (they may be released after it), so the instance detaches on destruction and later
// calls fail DISCONNECTED. Shard-local (the issuer it points to is thread-safe).
class Shard final : public kj::Refcounted {
public:
  Shard(Context& context, const Issuer::Options& options, kj::Duration latency)
      : issuer(joinIssuer(options)), latency(latency), context_(context) {}

  Context& context() {
    KJ_IF_MAYBE (borrowed, context_) {
      return *borrowed;
    }
    kj::throwFatalException(
        KJ_EXCEPTION(DISCONNECTED, "the card-processor instance has been shut down"));
  }

  void detach() { context_ = nullptr; }

  const kj::Own<const SharedIssuer> issuer;
  const kj::Duration latency;

private:
  kj::Maybe<Context&> context_;
};

// Sends `outcome` now, or after the issuer's delay; the operation has already taken effect, so
// a caller who gives up waiting learns the result by retrying with the same idempotency key.
template <typename Call>
kj::Promise<void> deliver(Shard& shard, Call call, Outcome outcome) {
  if (outcome.delay <= 0 * kj::SECONDS) {
    fill(call.getResults().initResult(), outcome.result);
    return kj::READY_NOW;
  }
  return shard.context()
      .clock()
      .timer()
      .afterDelay(outcome.delay)
      .then([call, result = kj::mv(outcome.result)]() mutable {
        fill(call.getResults().initResult(), result);
      });
}

using Interface = schema::CardProcessor;
using CaptureCall = capnp::CallContext<Interface::CaptureParams, Interface::CaptureResults>;
using VoidCall =
    capnp::CallContext<Interface::VoidAuthorizationParams, Interface::VoidAuthorizationResults>;
using RefundCall = capnp::CallContext<Interface::RefundParams, Interface::RefundResults>;
using SyncCall = capnp::CallContext<Interface::SyncParams, Interface::SyncResults>;

using PurchaseCall = capnp::CallContext<Interface::PurchaseParams, Interface::PurchaseResults>;

// Authorize and purchase take the same request; `purchase` selects the issuer's operation.
template <typename Call>
kj::Promise<void> authorizeNow(Shard& shard, Call call, bool purchase) {
  auto& context = shard.context();
  auto request = call.getParams().getRequest();
  auto metadataList = request.getMetadata();
  auto metadata = kj::heapArray<MetadataEntry>(metadataList.size());
  for (auto i : kj::indices(metadataList)) {
    metadata[i] = MetadataEntry{metadataList[i].getKey(), metadataList[i].getValue()};
  }
  auto amount = request.getAmount();
  AuthorizeRequest plain{
      .merchantId = request.getMerchantId(),
      .amount = amount.getMinorUnits(),
      .currency = amount.getCurrency(),
      .cardToken = request.getCardToken(),
      .idempotencyKey = request.getIdempotencyKey(),
      .metadata = metadata,
  };
  auto outcome = shard.issuer->run(context.clock().now(), [&](Issuer& issuer, kj::Date now) {
    return purchase ? issuer.purchase(plain, now) : issuer.authorize(plain, now);
  });

  auto amountText = kj::str(plain.amount);
  const LogField fields[] = {
      {"merchant", merchantForLog(plain.merchantId)},
      {"amount", amountText},
      {"currency", currencyForLog(plain.currency)},
      {"token", tokenForLog(plain.cardToken)},
  };
  logOutcome(context.log(), purchase ? "card.purchase"_kj : "card.authorize"_kj, fields, outcome);
  return deliver(shard, call, kj::mv(outcome));
}

kj::Promise<void> captureNow(Shard& shard, CaptureCall call) {
  auto& context = shard.context();
  auto request = call.getParams().getRequest();
  auto amount = request.getAmount();
  CaptureRequest plain{
      .transactionId = request.getTransactionId(),
      .amount = amount.getMinorUnits(),
      .currency = amount.getCurrency(),
      .idempotencyKey = request.getIdempotencyKey(),
  };
  auto outcome = shard.issuer->run(context.clock().now(), [&](Issuer& issuer, kj::Date now) {
    return issuer.capture(plain, now);
  });

  auto amountText = kj::str(plain.amount);
  const LogField fields[] = {
      {"amount", amountText},
      {"currency", currencyForLog(plain.currency)},
  };
  logOutcome(context.log(), "card.capture", fields, outcome);
  return deliver(shard, call, kj::mv(outcome));
}

kj::Promise<void> voidNow(Shard& shard, VoidCall call) {
  auto& context = shard.context();
  auto request = call.getParams().getRequest();
  VoidRequest plain{
      .transactionId = request.getTransactionId(),
      .idempotencyKey = request.getIdempotencyKey(),
  };
  auto outcome = shard.issuer->run(context.clock().now(), [&](Issuer& issuer, kj::Date now) {
    return issuer.voidAuthorization(plain, now);
  });
  logOutcome(context.log(), "card.void", nullptr, outcome);
  return deliver(shard, call, kj::mv(outcome));
}

kj::Promise<void> refundNow(Shard& shard, RefundCall call) {
  auto& context = shard.context();
  auto request = call.getParams().getRequest();
  auto amount = request.getAmount();
  RefundRequest plain{
      .transactionId = request.getTransactionId(),
      .amount = amount.getMinorUnits(),
      .currency = amount.getCurrency(),
      .idempotencyKey = request.getIdempotencyKey(),
  };
  auto outcome = shard.issuer->run(context.clock().now(), [&](Issuer& issuer, kj::Date now) {
    return issuer.refund(plain, now);
  });

  auto amountText = kj::str(plain.amount);
  const LogField fields[] = {
      {"amount", amountText},
      {"currency", currencyForLog(plain.currency)},
  };
  logOutcome(context.log(), "card.refund", fields, outcome);
  return deliver(shard, call, kj::mv(outcome));
}

kj::Promise<void> syncNow(Shard& shard, SyncCall call) {
  auto& context = shard.context();
  auto transactionId = call.getParams().getTransactionId();
  auto outcome = shard.issuer->run(context.clock().now(), [&](Issuer& issuer, kj::Date now) {
    return issuer.sync(transactionId, now);
  });
  logOutcome(context.log(), "card.sync", nullptr, outcome);
  return deliver(shard, call, kj::mv(outcome));
}

class CardServer final : public Interface::Server {
public:
  explicit CardServer(kj::Own<Shard> shard) : shard(kj::mv(shard)) {}

  kj::Promise<void> authorize(AuthorizeContext call) override {
    return afterLatency([call](Shard& held) mutable { return authorizeNow(held, call, false); });
  }
  kj::Promise<void> purchase(PurchaseContext call) override {
    return afterLatency([call](Shard& held) mutable { return authorizeNow(held, call, true); });
  }
  kj::Promise<void> capture(CaptureContext call) override {
    return afterLatency([call](Shard& held) mutable { return captureNow(held, call); });
  }
  kj::Promise<void> voidAuthorization(VoidAuthorizationContext call) override {
    return afterLatency([call](Shard& held) mutable { return voidNow(held, call); });
  }
  kj::Promise<void> refund(RefundContext call) override {
    return afterLatency([call](Shard& held) mutable { return refundNow(held, call); });
  }
  kj::Promise<void> sync(SyncContext call) override {
    return afterLatency([call](Shard& held) mutable { return syncNow(held, call); });
  }

private:
  // Waits the configured latency before the operation, so a call cancelled meanwhile has no
  // effect. The continuation holds its own reference: it must not depend on this server.
  template <typename Operation>
  kj::Promise<void> afterLatency(Operation&& operation) {
    if (shard->latency <= 0 * kj::SECONDS) return operation(*shard);
    return shard->context()
        .clock()
        .timer()
        .afterDelay(shard->latency)
        .then([held = kj::addRef(*shard), operation = kj::fwd<Operation>(operation)]() mutable {
          return operation(*held);
        });
  }

  kj::Own<Shard> shard;
};

int64_t configInteger(const Config& config, kj::StringPtr key, int64_t defaultValue, int64_t min,
                      int64_t max) {
  int64_t value = config.integer(key, defaultValue);
  KJ_REQUIRE(value >= min && value <= max, "card-processor config value out of range", key, value,
             min, max);
  return value;
}

Issuer::Options readOptions(Context& context) {
  auto& config = context.config();
  Issuer::Options options;
  options.maxAmountMinor = configInteger(config, "max_amount_minor", options.maxAmountMinor, 1,
                                         std::numeric_limits<int64_t>::max());
  options.authWindow =
      configInteger(config, "auth_window_s", 7 * 24 * 3600, 1, MAX_AUTH_WINDOW_S) * kj::SECONDS;
  options.slowDelay = configInteger(config, "slow_ms", 2000, 0, MAX_DELAY_MS) * kj::MILLISECONDS;
  options.retention =
      configInteger(config, "retention_s", 24 * 3600, 1, MAX_AUTH_WINDOW_S) * kj::SECONDS;
  options.maxTransactions =
      static_cast<size_t>(configInteger(config, "max_transactions", 100'000, 1, 100'000'000));
  return options;
}

kj::Duration readLatency(Context& context) {
  return configInteger(context.config(), "latency_ms", 0, 0, MAX_DELAY_MS) * kj::MILLISECONDS;
}

class CardPlugin final : public Plugin {
public:
  explicit CardPlugin(Context& context)
      : shard(kj::refcounted<Shard>(context, readOptions(context), readLatency(context))) {}
  ~CardPlugin() noexcept(false) { shard->detach(); }
  KJ_DISALLOW_COPY(CardPlugin);

  capnp::Capability::Client service(kj::StringPtr name) override {
    KJ_REQUIRE(name == SERVICE_NAME, "card-processor provides only payments.card", name);
    return serve<CardServer>(kj::addRef(*shard));
  }

private:
  kj::Own<Shard> shard;
};

}  // namespace
}  // namespace payhost::plugins::card

PAYHOST_PLUGIN(payhost::plugins::card::CardPlugin, "card-processor", "1.0.0",
               PAYHOST_SERVICE("payments.card", payhost::schema::CardProcessor));
