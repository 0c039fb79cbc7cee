// payhost-bench-grpc-flow: the payment flow as separate gRPC processes calling each other, the
// microservices a team would build instead of payhost, for `payhost-flow-bench --versus grpc`.
// One executable, one service per process:
//
//   payhost-bench-grpc-flow --service fraud --listen 127.0.0.1:0
//   payhost-bench-grpc-flow --service fx --listen 127.0.0.1:0
//   payhost-bench-grpc-flow --service ledger --listen 127.0.0.1:0 --db ledger.sqlite [--max-batch
//   1] payhost-bench-grpc-flow --service payments --listen 127.0.0.1:0 --db payments.sqlite
//       --fraud ADDR --card ADDR --fx ADDR --ledger ADDR [--max-batch 1]
//
// The card processor is payhost-bench-grpc-server (grpc-server.cpp). Each service compiles in the
// plugin's own code, so it does the same work per call as the plugin in payhostd:
// - fraud: plugins/fraud-screen/rules.cpp's `Screen` (velocity limits as the benchmark configures
//   payhostd), behind a mutex (gRPC runs handlers on its thread pool);
// - fx: plugins/fx/rate.cpp's exact conversion and the SDK's currency table; a quote is kept in
//   memory until it expires, as the plugin's desk keeps it;
// - ledger: plugins/ledger/engine.cpp's `applyBatch` over SQLite (WAL, synchronous=FULL);
// - payments: plugins/payments/store.cpp's claim and result (`applyDb`) over its own SQLite file,
//   and the same orchestration as plugins/payments/payments.cpp for a purchase: claim -> fraud
//   screen -> card purchase -> ledger accounts (once) -> FX quote when the settlement currency
//   differs -> ledger transfer (charge currency), then the settlement transfer -> result and
//   payment row stored -> answer. Every downstream call is a gRPC call.
// `--max-batch 1` (the default) is the straightforward service: one durable transaction per
// request. A larger value group-commits the requests that arrive while a transaction commits.
//
// Prints "listening PORT" once it serves; runs until SIGTERM or SIGINT.

#include "bench/grpc/authorize.grpc.pb.h"
#include "bench/grpc/committer.h"
#include "bench/grpc/flow.grpc.pb.h"

#include <payhost/money.h>
#include <payhost/payments.capnp.h>

#include <kj/debug.h>
#include <kj/map.h>
#include <kj/time.h>

#include <CLI/CLI.hpp>

#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "plugins/fraud-screen/rules.h"
#include "plugins/fx/rate.h"
#include "plugins/ledger/engine.h"
#include "plugins/payments/store.h"

namespace payhost::bench::grpcflow {
namespace {

namespace pb = payhost::bench::grpc;
namespace fraud = payhost::plugins::fraud;
namespace fx = payhost::plugins::fx;
namespace ledger = payhost::plugins::ledger;
namespace payments = payhost::plugins::payments;

// schemas/payhost/payments.capnp's enumerants, which the protos mirror: taken from the schema so
// the two cannot drift apart.
constexpr int code(auto enumerant) {
  return static_cast<int>(enumerant);
}
constexpr int REJECT_INVALID_REQUEST = code(payhost::schema::RejectCode::INVALID_REQUEST);
constexpr int REJECT_IDEMPOTENCY_CONFLICT = code(payhost::schema::RejectCode::IDEMPOTENCY_CONFLICT);
constexpr int REJECT_AMOUNT_EXCEEDS_AVAILABLE =
    code(payhost::schema::RejectCode::AMOUNT_EXCEEDS_AVAILABLE);
constexpr int REJECT_UNSUPPORTED_CURRENCY = code(payhost::schema::RejectCode::UNSUPPORTED_CURRENCY);
constexpr int DECLINE_SUSPECTED_FRAUD = code(payhost::schema::DeclineCode::SUSPECTED_FRAUD);
constexpr int ADVICE_DO_NOT_RETRY = code(payhost::schema::Advice::DO_NOT_RETRY);

kj::StringPtr view(const std::string& text) {
  // std::string keeps a terminator after its characters.
  return kj::StringPtr(text.c_str(), text.size());
}

void setMoney(pb::Money& out, int64_t minorUnits, kj::StringPtr currency) {
  out.set_minor_units(minorUnits);
  out.set_currency(currency.cStr(), currency.size());
}

int64_t nowMs() {
  return (kj::systemPreciseCalendarClock().now() - kj::UNIX_EPOCH) / kj::MILLISECONDS;
}

::grpc::ServerUnaryReactor* finished(::grpc::CallbackServerContext* context,
                                     const ::grpc::Status& status = ::grpc::Status::OK) {
  auto* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

// --- fraud ---------------------------------------------------------------------------------------

class FraudService final : public pb::FraudScreen::CallbackService {
public:
  explicit FraudService(fraud::Settings settings) : rules(kj::mv(settings)) {}
  // gRPC's base destructor is noexcept; KJ members' are not declared so.
  ~FraudService() noexcept override {}

  ::grpc::ServerUnaryReactor* Screen(::grpc::CallbackServerContext* context,
                                     const pb::ScreenRequest* request,
                                     pb::ScreenResponse* response) override {
    fraud::ScreenRequest plain{
        .merchantId = view(request->merchant_id()),
        .amount = request->amount().minor_units(),
        .currency = view(request->amount().currency()),
        .cardToken = view(request->card_token()),
        .cardCountry = view(request->card_country()),
        .ipCountry = view(request->ip_country()),
        .merchantCountry = view(request->merchant_country()),
    };
    auto& out = *response->mutable_verdict();
    std::lock_guard<std::mutex> lock(mutex);
    auto outcome = rules.screen(plain, kj::systemPreciseCalendarClock().now());
    KJ_SWITCH_ONEOF(outcome) {
      KJ_CASE_ONEOF(verdict, fraud::Verdict) {
        out.set_decision(verdict.decision == fraud::Decision::ALLOW    ? pb::ALLOW
                         : verdict.decision == fraud::Decision::REVIEW ? pb::REVIEW
                                                                       : pb::DENY);
        out.set_score(verdict.score);
        for (auto& rule : verdict.rules) {
          out.add_fired_rules(rule.name.cStr());
          auto& fired = *out.add_rules();
          fired.set_name(rule.name.cStr());
          fired.set_score(rule.score);
          fired.set_detail(rule.detail.cStr());
        }
      }
      KJ_CASE_ONEOF(refusal, fraud::Refusal) {
        out.set_decision(pb::REJECTED);
        out.mutable_rejection()->set_code(REJECT_INVALID_REQUEST);
        out.mutable_rejection()->set_message(refusal.message.cStr());
      }
    }
    return finished(context);
  }

private:
  std::mutex mutex;
  fraud::Screen rules;
};

// --- fx ------------------------------------------------------------------------------------------

class FxService final : public pb::Fx::CallbackService {
public:
  // `rates`: "EUR_USD" -> "1.0842", as the plugin's `[plugin.config.rates]`.
  explicit FxService(std::initializer_list<std::pair<const char*, const char*>> rates) {
    for (auto& [key, text] : rates) {
      kj::StringPtr pair = key;
      auto& source = KJ_REQUIRE_NONNULL(findCurrency(kj::heapString(pair.slice(0, 3))));
      auto& target = KJ_REQUIRE_NONNULL(findCurrency(kj::heapString(pair.slice(4))));
      kj::StringPtr problem;
      auto rate = KJ_REQUIRE_NONNULL(fx::tryParseRate(text, problem), problem);
      pairs.insert(kj::str(pair), Pair{&source, &target, rate});
    }
  }

  ~FxService() noexcept override {}

  ::grpc::ServerUnaryReactor* Quote(::grpc::CallbackServerContext* context,
                                    const pb::QuoteRequest* request,
                                    pb::FxResponse* response) override {
    auto reject = [&](int code, kj::StringPtr message) {
      response->mutable_rejected()->set_code(code);
      response->mutable_rejected()->set_message(message.cStr());
      return finished(context);
    };
    auto sourceCode = view(request->source().currency());
    auto targetCode = view(request->target_currency());
    int64_t sourceMinor = request->source().minor_units();
    KJ_IF_MAYBE (error, checkCharge(sourceMinor, sourceCode)) {
      return reject(*error == MoneyError::UNKNOWN_CURRENCY ? REJECT_UNSUPPORTED_CURRENCY
                                                           : REJECT_INVALID_REQUEST,
                    moneyErrorMessage(*error));
    }
    if (findCurrency(targetCode) == nullptr) {
      return reject(REJECT_UNSUPPORTED_CURRENCY, "target currency is not an ISO 4217 currency");
    }
    auto now = kj::systemPreciseCalendarClock().now();
    std::lock_guard<std::mutex> lock(mutex);
    forgetExpired(now);
    auto key = kj::str(sourceCode, "_", targetCode);
    Pair* pair = nullptr;
    KJ_IF_MAYBE (found, pairs.find(key)) {
      pair = found;
    } else {
      return reject(REJECT_UNSUPPORTED_CURRENCY, kj::str("no rate from ", sourceCode));
    }
    fx::ConvertError error;
    KJ_IF_MAYBE (target, fx::convert(sourceMinor, pair->source->exponent, pair->target->exponent,
                                     pair->rate, error)) {
      auto id = kj::str("fxq_0_", ++quoteCount);
      auto expiresAt = now + TTL;
      auto& quote = *response->mutable_quote();
      quote.set_quote_id(id.cStr());
      setMoney(*quote.mutable_source(), sourceMinor, pair->source->code);
      setMoney(*quote.mutable_target(), *target, pair->target->code);
      quote.set_rate(fx::formatRate(pair->rate).cStr());
      quote.set_expires_at_unix_ms((expiresAt - kj::UNIX_EPOCH) / kj::MILLISECONDS);
      expiryOrder.push_back(kj::str(id));
      quotes.insert(kj::mv(id), Held{sourceMinor, *target, expiresAt});
      return finished(context);
    }
    return reject(REJECT_INVALID_REQUEST, "the amount cannot be converted");
  }

private:
  static constexpr kj::Duration TTL = 60 * kj::SECONDS;
  struct Pair {
    const CurrencyInfo* source;
    const CurrencyInfo* target;
    fx::Rate rate;
  };
  struct Held {
    int64_t sourceMinor;
    int64_t targetMinor;
    kj::Date expiresAt;
  };

  std::mutex mutex;
  kj::HashMap<kj::String, Pair> pairs;
  uint64_t quoteCount = 0;
  kj::HashMap<kj::String, Held> quotes;
  std::deque<kj::String> expiryOrder;

  // As the plugin: quotes are kept one TTL past their expiry, then forgotten.
  void forgetExpired(kj::Date now) {
    while (!expiryOrder.empty()) {
      auto& id = expiryOrder.front();
      KJ_IF_MAYBE (held, quotes.find(id)) {
        if (now < held->expiresAt + TTL) break;
        quotes.erase(id);
      }
      expiryOrder.pop_front();
    }
  }
};

// --- ledger --------------------------------------------------------------------------------------

kj::Array<ledger::Outcome> applyLedger(SqlTransaction& tx,
                                       kj::ArrayPtr<const ledger::Operation> operations) {
  return ledger::applyBatch(tx, SqlDialect::SQLITE, operations);
}

ledger::Kind kindOf(pb::TransferKind kind) {
  switch (kind) {
    case pb::POSTED:
      return ledger::Kind::POSTED;
    case pb::PENDING:
      return ledger::Kind::PENDING;
    case pb::POST_PENDING:
      return ledger::Kind::POST_PENDING;
    case pb::VOID_PENDING:
      return ledger::Kind::VOID_PENDING;
    default:
      // As the plugin: unspecified is posted; anything unknown is refused by the engine.
      return kind == pb::TRANSFER_KIND_UNSPECIFIED ? ledger::Kind::POSTED
                                                   : ledger::Kind::EXPIRE_PENDING;
  }
}

int codeOf(ledger::Reject code) {
  switch (code) {
    case ledger::Reject::INVALID_REQUEST:
      return REJECT_INVALID_REQUEST;
    case ledger::Reject::IDEMPOTENCY_CONFLICT:
      return REJECT_IDEMPOTENCY_CONFLICT;
    case ledger::Reject::INVALID_STATE:
      return 3;
    case ledger::Reject::UNKNOWN_TRANSACTION:
      return 4;
    case ledger::Reject::EXCEEDS_LIMIT:
      return REJECT_AMOUNT_EXCEEDS_AVAILABLE;
    case ledger::Reject::CURRENCY_MISMATCH:
      return 6;
  }
  KJ_UNREACHABLE;
}

class LedgerService final : public pb::Ledger::CallbackService {
public:
  LedgerService(kj::StringPtr path, size_t maxBatch)
      : commits(path, &applyLedger, maxBatch,
                [](SqlTransaction& tx) { ledger::createSchema(tx, SqlDialect::SQLITE); }),
        reads("bench", path) {}
  ~LedgerService() noexcept override {}

  ::grpc::ServerUnaryReactor* TransferAll(::grpc::CallbackServerContext* context,
                                          const pb::TransferAllRequest* request,
                                          pb::LedgerResult* response) override {
    if (request->requests_size() > 64) {
      return finished(context, ::grpc::Status(::grpc::StatusCode::INVALID_ARGUMENT,
                                              "at most 64 linked transfers"));
    }
    ledger::Operation operation;
    auto transfers = kj::heapArrayBuilder<ledger::Transfer>(request->requests_size());
    for (auto& t : request->requests()) {
      transfers.add(
          ledger::Transfer{kj::str(view(t.transfer_id())), kj::str(view(t.debit_account())),
                           kj::str(view(t.credit_account())), kj::str(view(t.amount().currency())),
                           t.amount().minor_units(), kindOf(t.kind()),
                           kj::str(view(t.pending_id())), t.timeout_ms()});
    }
    operation.transfers = transfers.finish();
    return submit(context, kj::mv(operation), *response);
  }

  ::grpc::ServerUnaryReactor* CreateAccount(::grpc::CallbackServerContext* context,
                                            const pb::AccountRequest* request,
                                            pb::LedgerResult* response) override {
    ledger::Operation operation;
    operation.type = ledger::Operation::Type::CREATE_ACCOUNT;
    operation.account.id = kj::str(view(request->account_id()));
    operation.account.currency = kj::str(view(request->currency()));
    operation.account.flags.debitsMustNotExceedCredits =
        request->flags().debits_must_not_exceed_credits();
    operation.account.flags.creditsMustNotExceedDebits =
        request->flags().credits_must_not_exceed_debits();
    return submit(context, kj::mv(operation), *response);
  }

  // For the benchmark's check at the end; blocks a gRPC thread for one read.
  ::grpc::ServerUnaryReactor* GetBalance(::grpc::CallbackServerContext* context,
                                         const pb::BalanceRequest* request,
                                         pb::Balance* response) override {
    kj::Maybe<ledger::Balance> found;
    {
      std::lock_guard<std::mutex> lock(readMutex);
      _::runTransaction(reads, [&](SqlTransaction& tx) {
        found = ledger::loadBalance(tx, view(request->account_id()), view(request->currency()));
      });
    }
    response->set_account_id(request->account_id());
    KJ_IF_MAYBE (b, found) {
      response->set_exists(true);
      setMoney(*response->mutable_debits(), b->debitsPosted, b->currency);
      setMoney(*response->mutable_credits(), b->creditsPosted, b->currency);
      setMoney(*response->mutable_debits_pending(), b->debitsPending, b->currency);
      setMoney(*response->mutable_credits_pending(), b->creditsPending, b->currency);
      response->mutable_flags()->set_debits_must_not_exceed_credits(
          b->flags.debitsMustNotExceedCredits);
      response->mutable_flags()->set_credits_must_not_exceed_debits(
          b->flags.creditsMustNotExceedDebits);
    }
    return finished(context);
  }

private:
  Committer<ledger::Operation, ledger::Outcome> commits;
  std::mutex readMutex;
  _::SqliteConnection reads;

  ::grpc::ServerUnaryReactor* submit(::grpc::CallbackServerContext* context,
                                     ledger::Operation operation, pb::LedgerResult& response) {
    operation.nowMs = nowMs();
    auto* reactor = context->DefaultReactor();
    commits.submit(kj::mv(operation),
                   [reactor, &response](kj::Maybe<ledger::Outcome>&& outcome, kj::StringPtr error) {
                     KJ_IF_MAYBE (o, outcome) {
                       if (o->ok) {
                         response.set_posted(o->id.cStr());
                       } else {
                         response.mutable_rejected()->set_code(codeOf(o->code));
                         response.mutable_rejected()->set_message(o->message.cStr());
                       }
                       response.set_replayed(o->replayed);
                       reactor->Finish(::grpc::Status::OK);
                     } else {
                       reactor->Finish(::grpc::Status(::grpc::StatusCode::INTERNAL, error.cStr()));
                     }
                   });
    return reactor;
  }
};

// --- payments ------------------------------------------------------------------------------------

struct Downstream {
  std::string fraud;
  std::string card;
  std::string fx;
  std::string ledger;
};

class PaymentsService;

// One purchase on its way through the flow. Owns itself (`self`) from `start` until it answers;
// each step's callback continues it on whichever thread gRPC or the committer calls back on, and
// only one step runs at a time.
class PurchaseFlow final {
public:
  PurchaseFlow(PaymentsService& service, const pb::PaymentRequest& request,
               pb::AuthorizeResponse& response, ::grpc::ServerUnaryReactor& reactor)
      : service(service), request(request), response(response), reactor(reactor) {}
  KJ_DISALLOW_COPY(PurchaseFlow);

  static void start(kj::Own<PurchaseFlow> purchase);

private:
  PaymentsService& service;
  const pb::PaymentRequest& request;
  pb::AuthorizeResponse& response;
  ::grpc::ServerUnaryReactor& reactor;
  kj::Own<PurchaseFlow> self;

  kj::String key;
  kj::String currency;
  kj::String settlement;
  payments::PaymentRow row;
  kj::String authCode;
  int64_t settled = 0;
  size_t account = 0;
  // Each downstream call's context lives until the purchase is answered.
  std::list<::grpc::ClientContext> contexts;
  pb::ScreenRequest screenRequest;
  pb::ScreenResponse screenResponse;
  pb::AuthorizeRequest cardRequest;
  pb::AuthorizeResponse cardResponse;
  pb::AccountRequest accountRequest;
  pb::LedgerResult accountResult;
  pb::QuoteRequest quoteRequest;
  pb::FxResponse quoteResponse;
  pb::TransferAllRequest transferRequest;
  pb::LedgerResult transferResult;

  void claim();
  void claimed(kj::Maybe<payments::DbResult>&& claim, kj::StringPtr error);
  void screen();
  void screened(const ::grpc::Status& status);
  void charged(const ::grpc::Status& status);
  void ensureAccounts();
  void quote();
  void capture();
  void settle();
  void approve();
  void reject(int code, kj::StringPtr message);
  // Stores the result in `response` (and the row, when set) durably, then answers.
  void finish(bool storeRow);
  void fail(const ::grpc::Status& status);
  void answer(const ::grpc::Status& status);
  ::grpc::ClientContext& newContext() { return contexts.emplace_back(); }
};

class PaymentsService final : public pb::Payments::CallbackService {
public:
  PaymentsService(kj::StringPtr path, size_t maxBatch, const Downstream& downstream)
      : commits(path, &payments::applyDb, maxBatch,
                [](SqlTransaction& tx) { payments::createSchema(tx); }),
        fraud(pb::FraudScreen::NewStub(channel(downstream.fraud))),
        card(pb::CardProcessor::NewStub(channel(downstream.card))),
        fx(pb::Fx::NewStub(channel(downstream.fx))),
        ledger(pb::Ledger::NewStub(channel(downstream.ledger))) {}
  ~PaymentsService() noexcept override {}

  ::grpc::ServerUnaryReactor* Purchase(::grpc::CallbackServerContext* context,
                                       const pb::PaymentRequest* request,
                                       pb::AuthorizeResponse* response) override {
    auto* reactor = context->DefaultReactor();
    PurchaseFlow::start(kj::heap<PurchaseFlow>(*this, *request, *response, *reactor));
    return reactor;
  }

  static constexpr int64_t WINDOW_MS = int64_t{7} * 24 * 3600 * 1000;
  static constexpr int64_t CLAIM_TIMEOUT_MS = 30'000;

  Committer<payments::DbOp, payments::DbResult> commits;
  std::unique_ptr<pb::FraudScreen::Stub> fraud;
  std::unique_ptr<pb::CardProcessor::Stub> card;
  std::unique_ptr<pb::Fx::Stub> fx;
  std::unique_ptr<pb::Ledger::Stub> ledger;

  // Accounts created so far ("currency/id"), as the plugin creates each once per instance.
  bool knows(const std::string& account) {
    std::lock_guard<std::mutex> lock(mutex);
    return accounts.count(account) != 0;
  }
  void learn(std::string account) {
    std::lock_guard<std::mutex> lock(mutex);
    accounts.insert(kj::mv(account));
  }

private:
  std::mutex mutex;
  std::set<std::string> accounts;

  static std::shared_ptr<::grpc::Channel> channel(const std::string& address) {
    return ::grpc::CreateChannel(address, ::grpc::InsecureChannelCredentials());
  }
};

void PurchaseFlow::start(kj::Own<PurchaseFlow> purchase) {
  auto& p = *purchase;
  p.self = kj::mv(purchase);
  p.claim();
}

void PurchaseFlow::claim() {
  key = kj::str(view(request.idempotency_key()));
  currency = kj::str(view(request.amount().currency()));
  settlement = request.settlement_currency().empty() ? kj::str(currency)
                                                     : kj::str(view(request.settlement_currency()));
  if (!payments::validText(key, payments::MAX_KEY_BYTES)) {
    // As the plugin: refused before anything is claimed or stored.
    response.mutable_result()->mutable_rejected()->set_code(REJECT_INVALID_REQUEST);
    response.mutable_result()->mutable_rejected()->set_message(
        "idempotency key must be 1 to 255 printable bytes");
    return answer(::grpc::Status::OK);
  }
  payments::DbOp op;
  op.type = payments::DbOp::Type::CLAIM;
  op.key = kj::str(key);
  op.request =
      kj::str("purchase|", view(request.merchant_id()), "|", request.amount().minor_units(), "|",
              currency, "|", settlement, "|", view(request.card_token()), "|",
              view(request.card_country()), "|", view(request.ip_country()));
  op.nowMs = nowMs();
  op.staleMs = PaymentsService::CLAIM_TIMEOUT_MS;
  op.paymentId = payments::paymentIdFor(key);
  service.commits.submit(kj::mv(op),
                         [this](kj::Maybe<payments::DbResult>&& result, kj::StringPtr error) {
                           claimed(kj::mv(result), error);
                         });
}

void PurchaseFlow::claimed(kj::Maybe<payments::DbResult>&& claim, kj::StringPtr error) {
  payments::DbResult* result = nullptr;
  KJ_IF_MAYBE (c, claim) {
    result = c;
  } else {
    return fail(::grpc::Status(::grpc::StatusCode::INTERNAL, error.cStr()));
  }
  auto& out = *response.mutable_result();
  switch (result->kind) {
    case payments::DbResult::Kind::CONFLICT:
      out.mutable_rejected()->set_code(REJECT_IDEMPOTENCY_CONFLICT);
      out.mutable_rejected()->set_message(
          "idempotency key was used before with a different request");
      return answer(::grpc::Status::OK);
    case payments::DbResult::Kind::STORED:
      if (!out.ParseFromArray(result->stored.begin(), static_cast<int>(result->stored.size()))) {
        return fail(::grpc::Status(::grpc::StatusCode::DATA_LOSS, "stored result unreadable"));
      }
      return answer(::grpc::Status::OK);
    case payments::DbResult::Kind::BUSY:
      out.set_not_attempted("a request with this idempotency key is in progress; retry");
      return answer(::grpc::Status::OK);
    case payments::DbResult::Kind::DONE:
    case payments::DbResult::Kind::PROCEED:
      break;
  }
  KJ_IF_MAYBE (existing, result->payment) {
    // A payment id from a retried claim: it was already recorded.
    row = existing->clone();
    authCode = kj::str();
    return approve();
  }
  auto merchant = view(request.merchant_id());
  if (!payments::validText(merchant, 200) || merchant.findFirst(' ') != nullptr) {
    return reject(REJECT_INVALID_REQUEST, "bad merchant id");
  }
  if (request.amount().minor_units() <= 0 || currency.size() != 3 || settlement.size() != 3) {
    return reject(REJECT_INVALID_REQUEST, "amount must be positive, currencies three letters");
  }
  row.id = payments::paymentIdFor(key);
  row.merchant = kj::str(merchant);
  row.currency = kj::str(currency);
  row.settlement = kj::str(settlement);
  row.cardTxn = kj::str();
  screen();
}

void PurchaseFlow::screen() {
  screenRequest.set_merchant_id(request.merchant_id());
  *screenRequest.mutable_amount() = request.amount();
  screenRequest.set_card_token(request.card_token());
  screenRequest.set_card_country(request.card_country());
  screenRequest.set_ip_country(request.ip_country());
  service.fraud->async()->Screen(&newContext(), &screenRequest, &screenResponse,
                                 [this](const ::grpc::Status& done) { screened(done); });
}

void PurchaseFlow::screened(const ::grpc::Status& status) {
  if (!status.ok()) return fail(status);
  auto& verdict = screenResponse.verdict();
  if (verdict.decision() == pb::REJECTED) {
    return reject(REJECT_INVALID_REQUEST, view(verdict.rejection().message()));
  }
  if (verdict.decision() == pb::DENY) {
    auto& declined = *response.mutable_result()->mutable_declined();
    declined.set_code(DECLINE_SUSPECTED_FRAUD);
    declined.set_reason("declined by the fraud screen");
    declined.set_advice(ADVICE_DO_NOT_RETRY);
    declined.set_transaction_id(row.id.cStr());
    row.state = payments::TransactionState::FAILED;
    return finish(true);
  }
  cardRequest.set_merchant_id(request.merchant_id());
  *cardRequest.mutable_amount() = request.amount();
  cardRequest.set_card_token(request.card_token());
  cardRequest.set_idempotency_key(row.id.cStr());
  service.card->async()->Purchase(&newContext(), &cardRequest, &cardResponse,
                                  [this](const ::grpc::Status& done) { charged(done); });
}

void PurchaseFlow::charged(const ::grpc::Status& status) {
  if (!status.ok()) return fail(status);
  auto& result = cardResponse.result();
  if (result.has_declined()) {
    *response.mutable_result() = result;
    response.mutable_result()->mutable_declined()->set_transaction_id(row.id.cStr());
    row.state = payments::TransactionState::FAILED;
    return finish(true);
  }
  if (!result.has_approved()) {
    *response.mutable_result() = result;
    return finish(false);
  }
  row.cardTxn = kj::str(view(result.approved().transaction_id()));
  row.authorized = request.amount().minor_units();
  row.expiresAtMs = nowMs() + PaymentsService::WINDOW_MS;
  authCode = kj::str(view(result.approved().auth_code()));
  ensureAccounts();
}

void PurchaseFlow::ensureAccounts() {
  // As the plugin: cards and the credited account in the charge currency, the merchant and the
  // FX desk in the settlement currency; each created once per instance.
  bool same = currency == settlement;
  auto merchant = payments::merchantAccount(row.merchant);
  struct Spec {
    kj::StringPtr id;
    kj::StringPtr currency;
    bool limited;
  };
  Spec specs[] = {{"cards", currency, false},
                  {same ? merchant.asPtr() : kj::StringPtr("fx"), currency, same},
                  {merchant, settlement, true},
                  {"fx", settlement, false}};
  for (; account < kj::size(specs); ++account) {
    auto& spec = specs[account];
    auto name = std::string(spec.currency.cStr()) + "/" + spec.id.cStr();
    if (service.knows(name)) continue;
    accountRequest.set_account_id(spec.id.cStr());
    accountRequest.set_currency(spec.currency.cStr());
    accountRequest.mutable_flags()->set_debits_must_not_exceed_credits(spec.limited);
    service.ledger->async()->CreateAccount(
        &newContext(), &accountRequest, &accountResult,
        [this, name = kj::mv(name)](const ::grpc::Status& status) mutable {
          if (!status.ok()) return fail(status);
          if (!accountResult.has_posted()) {
            return fail(::grpc::Status(::grpc::StatusCode::INTERNAL, "ledger refused an account"));
          }
          service.learn(kj::mv(name));
          ++account;
          ensureAccounts();
        });
    return;
  }
  quote();
}

void PurchaseFlow::quote() {
  if (currency == settlement) {
    settled = row.authorized;
    return capture();
  }
  setMoney(*quoteRequest.mutable_source(), row.authorized, currency);
  quoteRequest.set_target_currency(settlement.cStr());
  service.fx->async()->Quote(
      &newContext(), &quoteRequest, &quoteResponse, [this](const ::grpc::Status& status) {
        if (!status.ok()) return fail(status);
        if (!quoteResponse.has_quote()) {
          return fail(::grpc::Status(::grpc::StatusCode::INTERNAL, "fx refused a quote"));
        }
        settled = quoteResponse.quote().target().minor_units();
        capture();
      });
}

void PurchaseFlow::capture() {
  transferRequest.Clear();
  auto& t = *transferRequest.add_requests();
  t.set_transfer_id(kj::str(row.id, "/capture/0").cStr());
  t.set_debit_account("cards");
  t.set_credit_account(currency == settlement ? payments::merchantAccount(row.merchant).cStr()
                                              : "fx");
  setMoney(*t.mutable_amount(), row.authorized, currency);
  t.set_kind(pb::POSTED);
  service.ledger->async()->TransferAll(
      &newContext(), &transferRequest, &transferResult, [this](const ::grpc::Status& status) {
        if (!status.ok()) return fail(status);
        if (!transferResult.has_posted()) {
          return reject(REJECT_AMOUNT_EXCEEDS_AVAILABLE,
                        kj::str("ledger refused: ", view(transferResult.rejected().message())));
        }
        row.captured = row.authorized;
        row.captures = 1;
        row.settled = settled;
        row.state = payments::TransactionState::CAPTURED;
        if (currency == settlement) return approve();
        settle();
      });
}

void PurchaseFlow::settle() {
  transferRequest.Clear();
  auto& t = *transferRequest.add_requests();
  t.set_transfer_id(kj::str(row.id, "/settle/0").cStr());
  t.set_debit_account("fx");
  t.set_credit_account(payments::merchantAccount(row.merchant).cStr());
  setMoney(*t.mutable_amount(), settled, settlement);
  t.set_kind(pb::POSTED);
  service.ledger->async()->TransferAll(
      &newContext(), &transferRequest, &transferResult, [this](const ::grpc::Status& status) {
        if (!status.ok()) return fail(status);
        if (!transferResult.has_posted()) {
          return reject(REJECT_AMOUNT_EXCEEDS_AVAILABLE,
                        kj::str("ledger refused: ", view(transferResult.rejected().message())));
        }
        approve();
      });
}

void PurchaseFlow::approve() {
  auto& approved = *response.mutable_result()->mutable_approved();
  approved.set_transaction_id(row.id.cStr());
  approved.set_auth_code(authCode.cStr());
  setMoney(*approved.mutable_amount(), row.authorized, row.currency);
  approved.set_state(static_cast<pb::TransactionState>(row.state));
  finish(true);
}

void PurchaseFlow::reject(int code, kj::StringPtr message) {
  auto& rejected = *response.mutable_result()->mutable_rejected();
  rejected.set_code(code);
  rejected.set_message(message.cStr());
  finish(false);
}

void PurchaseFlow::finish(bool storeRow) {
  payments::DbOp op;
  op.type = payments::DbOp::Type::FINISH;
  op.key = kj::mv(key);
  auto bytes = response.result().SerializeAsString();
  op.result = kj::heapArray(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size());
  if (storeRow) op.payment = row.clone();
  service.commits.submit(
      kj::mv(op), [this](kj::Maybe<payments::DbResult>&& done, kj::StringPtr error) {
        if (done == nullptr)
          return fail(::grpc::Status(::grpc::StatusCode::INTERNAL, error.cStr()));
        answer(::grpc::Status::OK);
      });
}

void PurchaseFlow::fail(const ::grpc::Status& status) {
  answer(status);
}

void PurchaseFlow::answer(const ::grpc::Status& status) {
  reactor.Finish(status);
  auto dropped = kj::mv(self);
}

// --- serving -------------------------------------------------------------------------------------

// Serves `service` until SIGTERM or SIGINT. The signals are blocked before gRPC starts its threads
// and awaited with sigwait, so an idle service does not wake up.
int serve(::grpc::Service& service, const std::string& address) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  ::grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, ::grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  if (server == nullptr) {
    fprintf(stderr, "payhost-bench-grpc-flow: cannot listen on %s\n", address.c_str());
    return 1;
  }
  printf("listening %d\n", port);
  fflush(stdout);
  int received = 0;
  sigwait(&stop, &received);
  server->Shutdown();
  return 0;
}

struct Options {
  std::string service;
  std::string listen = "127.0.0.1:0";
  std::string db;
  size_t maxBatch = 1;
  Downstream downstream;
};

int run(const Options& options) {
  if (options.service == "fraud") {
    // As payhost-flow-bench configures the plugin: velocity limits out of the way.
    fraud::Settings settings;
    settings.card.limit = 1'000'000;
    settings.merchant.limit = 1'000'000;
    FraudService service(kj::mv(settings));
    return serve(service, options.listen);
  }
  if (options.service == "fx") {
    FxService service({{"EUR_USD", "1.0842"}, {"USD_EUR", "0.9223"}});
    return serve(service, options.listen);
  }
  KJ_REQUIRE(!options.db.empty(), "--db is required for", options.service.c_str());
  if (options.service == "ledger") {
    LedgerService service(options.db.c_str(), options.maxBatch);
    return serve(service, options.listen);
  }
  if (options.service == "payments") {
    auto& d = options.downstream;
    KJ_REQUIRE(!d.fraud.empty() && !d.card.empty() && !d.fx.empty() && !d.ledger.empty(),
               "payments needs --fraud, --card, --fx and --ledger");
    PaymentsService service(options.db.c_str(), options.maxBatch, d);
    return serve(service, options.listen);
  }
  fprintf(stderr, "payhost-bench-grpc-flow: unknown service %s\n", options.service.c_str());
  return 2;
}

}  // namespace
}  // namespace payhost::bench::grpcflow

int main(int argc, char** argv) {
  payhost::bench::grpcflow::Options options;
  CLI::App app{"payhost-bench-grpc-flow: one service of the payment flow over gRPC"};
  app.add_option("--service", options.service, "fraud, fx, ledger or payments")->required();
  app.add_option("--listen", options.listen, "address to listen on (127.0.0.1:0: any port)");
  app.add_option("--db", options.db, "SQLite file (ledger, payments)");
  app.add_option("--max-batch", options.maxBatch,
                 "requests per durable transaction (1: one transaction per request)")
      ->check(CLI::PositiveNumber);
  app.add_option("--fraud", options.downstream.fraud, "payments: the fraud service's address");
  app.add_option("--card", options.downstream.card, "payments: the card service's address");
  app.add_option("--fx", options.downstream.fx, "payments: the fx service's address");
  app.add_option("--ledger", options.downstream.ledger, "payments: the ledger's address");
  CLI11_PARSE(app, argc, argv);
  return payhost::bench::grpcflow::run(options);
}
