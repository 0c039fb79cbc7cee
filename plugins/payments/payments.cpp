// The payments plugin: serves `payhost::schema::Payments` (schemas/payhost/flow.capnp) as
// "payments.payments". A merchant's call goes: idempotency claim (its own database, group
// committed) -> fraud screen -> card processor -> ledger (pending and posted transfers, FX when
// the settlement currency differs) -> result and payment state stored in one transaction, and
// only then answered. See README.md for the state machine and the ledger accounts.

#include <payhost/context.h>
#include <payhost/flow.capnp.h>
#include <payhost/group-commit.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/debug.h>
#include <kj/refcount.h>
#include <kj/vector.h>

#include <cstdint>
#include <set>
#include <string>

#include "store.h"

namespace payhost::plugins::payments {
namespace {

namespace schema = payhost::schema;
using schema::TransactionState;

constexpr kj::StringPtr SERVICE_NAME = "payments.payments"_kj;

// ---------------------------------------------------------------------------------------------
// Results

using Message = kj::Own<capnp::MallocMessageBuilder>;

Message newResult() {
  return kj::heap<capnp::MallocMessageBuilder>();
}

Message rejected(schema::RejectCode code, kj::StringPtr message) {
  auto m = newResult();
  auto r = m->initRoot<schema::PaymentResult>().initRejected();
  r.setCode(code);
  r.setMessage(message);
  return m;
}

Message approved(kj::StringPtr paymentId, kj::StringPtr authCode, int64_t amount,
                 kj::StringPtr currency, TransactionState state) {
  auto m = newResult();
  auto a = m->initRoot<schema::PaymentResult>().initApproved();
  a.setTransactionId(paymentId);
  a.setAuthCode(authCode);
  a.initAmount().setMinorUnits(amount);
  a.getAmount().setCurrency(currency);
  a.setState(state);
  return m;
}

Message copyOf(schema::PaymentResult::Reader reader) {
  auto m = newResult();
  m->setRoot(reader);
  return m;
}

kj::Array<kj::byte> encode(capnp::MallocMessageBuilder& message) {
  auto words = capnp::messageToFlatArray(message);
  return kj::heapArray(words.asBytes());
}

Message decode(kj::ArrayPtr<const kj::byte> bytes) {
  auto words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  memcpy(words.begin(), bytes.begin(), words.size() * sizeof(capnp::word));
  capnp::FlatArrayMessageReader reader(words);
  return copyOf(reader.getRoot<schema::PaymentResult>());
}

// ---------------------------------------------------------------------------------------------
// The flow

struct Done {
  Message result;
  kj::Maybe<PaymentRow> payment;
};

// What Fx quoted, or why it would not.
struct Quoted {
  int64_t amount = 0;
  kj::Maybe<kj::String> refusal;
};

struct LedgerStep {
  kj::String id;
  kj::String debit;
  kj::String credit;
  int64_t amount;
  kj::String currency;
  schema::TransferKind kind;
  kj::String pendingId;
  int64_t timeoutMs = 0;
};

// Shared by an instance's servers; detached when the instance goes. Shard-local.
class Shard final : public kj::Refcounted {
public:
  Shard(Context& context, Database& database, int64_t windowMs, int64_t claimTimeoutMs)
      : context(context),
        database(database),
        windowMs(windowMs),
        claimTimeoutMs(claimTimeoutMs),
        commits(database, &applyDb),
        card(context.service<schema::CardProcessor>("payments.card")),
        fraud(context.service<schema::FraudScreen>("payments.fraud")),
        fx(context.service<schema::Fx>("payments.fx")),
        ledger(context.service<schema::Ledger>("payments.ledger")) {}

  void detach() { detached = true; }
  void check() {
    if (detached) {
      kj::throwFatalException(
          KJ_EXCEPTION(DISCONNECTED, "the payments instance has been shut down"));
    }
  }

  int64_t nowMs() { return (context.clock().now() - kj::UNIX_EPOCH) / kj::MILLISECONDS; }

  // Runs `flow(payment)` under the idempotency key, once; stores and returns its result.
  template <typename Flow>
  kj::Promise<Message> idempotent(kj::StringPtr key, kj::String request, kj::String paymentId,
                                  Flow flow) {
    check();
    if (!validText(key, MAX_KEY_BYTES)) {
      return rejected(schema::RejectCode::INVALID_REQUEST,
                      "idempotency key must be 1 to 255 printable bytes");
    }
    DbOp claim;
    claim.type = DbOp::Type::CLAIM;
    claim.key = kj::str(key);
    claim.request = kj::mv(request);
    claim.nowMs = nowMs();
    claim.staleMs = claimTimeoutMs;
    claim.paymentId = kj::mv(paymentId);
    return commits.submit(kj::mv(claim))
        .then([this, key = kj::str(key),
               flow = kj::mv(flow)](DbResult claimed) mutable -> kj::Promise<Message> {
          switch (claimed.kind) {
            case DbResult::Kind::CONFLICT:
              return rejected(schema::RejectCode::IDEMPOTENCY_CONFLICT,
                              "idempotency key was used before with a different request");
            case DbResult::Kind::STORED:
              return decode(claimed.stored);
            case DbResult::Kind::BUSY: {
              auto m = newResult();
              m->initRoot<schema::PaymentResult>().setNotAttempted(
                  "a request with this idempotency key is in progress; retry");
              return kj::mv(m);
            }
            case DbResult::Kind::DONE:
            case DbResult::Kind::PROCEED:
              break;
          }
          return flow(kj::mv(claimed.payment)).then([this, key = kj::mv(key)](Done done) mutable {
            DbOp finish;
            finish.type = DbOp::Type::FINISH;
            finish.key = kj::mv(key);
            finish.result = encode(*done.result);
            finish.payment = kj::mv(done.payment);
            return commits.submit(kj::mv(finish))
                .then([result = kj::mv(done.result)](DbResult) mutable { return kj::mv(result); });
          });
        });
  }

  // Creates the accounts once per instance (the ledger makes creation idempotent).
  kj::Promise<void> ensureAccount(kj::StringPtr id, kj::StringPtr currency, bool limited) {
    auto k = std::string(currency.cStr()) + "/" + id.cStr();
    if (accounts.count(k) != 0) return kj::READY_NOW;
    auto request = ledger.createAccountRequest();
    auto r = request.initRequest();
    r.setAccountId(id);
    r.setCurrency(currency);
    r.initFlags().setDebitsMustNotExceedCredits(limited);
    return request.send().then(
        [this, k = kj::mv(k)](capnp::Response<schema::Ledger::CreateAccountResults>&& response) {
          auto result = response.getResult();
          KJ_REQUIRE(result.isPosted(), "ledger refused an account",
                     result.isRejected() ? result.getRejected().getMessage() : "");
          accounts.insert(k);
        });
  }

  // Linked ledger transfers; the ledger's refusal message, if any.
  kj::Promise<kj::Maybe<kj::String>> post(kj::Array<LedgerStep> steps) {
    auto request = ledger.transferAllRequest();
    auto list = request.initRequests(steps.size());
    for (auto i : kj::indices(steps)) {
      auto& s = steps[i];
      auto t = list[i];
      t.setTransferId(s.id);
      t.setDebitAccount(s.debit);
      t.setCreditAccount(s.credit);
      t.initAmount().setMinorUnits(s.amount);
      t.getAmount().setCurrency(s.currency);
      t.setKind(s.kind);
      t.setPendingId(s.pendingId);
      t.setTimeoutMs(s.timeoutMs);
    }
    return request.send().then([](capnp::Response<schema::Ledger::TransferAllResults>&& response)
                                   -> kj::Maybe<kj::String> {
      auto result = response.getResult();
      if (result.isPosted()) return nullptr;
      return kj::str(result.isRejected() ? result.getRejected().getMessage() : "no result");
    });
  }

  // `amount` of `from` in `to` as Fx quotes it, or Fx's refusal.
  kj::Promise<Quoted> quote(int64_t amount, kj::StringPtr from, kj::StringPtr to) {
    auto request = fx.quoteRequest();
    request.initSource().setMinorUnits(amount);
    request.getSource().setCurrency(from);
    request.setTargetCurrency(to);
    return request.send().then([](capnp::Response<schema::Fx::QuoteResults>&& response) {
      auto result = response.getResult();
      if (result.isQuote()) return Quoted{result.getQuote().getTarget().getMinorUnits(), nullptr};
      return Quoted{0,
                    kj::str(result.isRejected() ? result.getRejected().getMessage() : "no quote")};
    });
  }

  // `amount` of `from` in `to`, through Fx (same currency: as is); a refusal throws. For amounts
  // within one whose quote already succeeded.
  kj::Promise<int64_t> convert(int64_t amount, kj::StringPtr from, kj::StringPtr to) {
    if (from == to) return amount;
    return quote(amount, from, to).then([](Quoted quoted) {
      KJ_IF_MAYBE (refusal, quoted.refusal) {
        KJ_FAIL_REQUIRE("fx refused a quote", *refusal);
      }
      return quoted.amount;
    });
  }

  Context& context;
  Database& database;
  int64_t windowMs;
  int64_t claimTimeoutMs;
  GroupCommit<DbOp, DbResult> commits;
  schema::CardProcessor::Client card;
  schema::FraudScreen::Client fraud;
  schema::Fx::Client fx;
  schema::Ledger::Client ledger;
  std::set<std::string> accounts;
  bool detached = false;
};

// The account a charge is credited to in the presentment ledger: the merchant itself, or the FX
// desk when the merchant settles in another currency.
kj::String creditFor(const PaymentRow& p) {
  return p.currency == p.settlement ? merchantAccount(p.merchant) : kj::str("fx");
}

Message ledgerFailed(kj::StringPtr message) {
  return rejected(schema::RejectCode::AMOUNT_EXCEEDS_AVAILABLE,
                  kj::str("ledger refused: ", message));
}

class PaymentsServer final : public schema::Payments::Server {
public:
  explicit PaymentsServer(kj::Own<Shard> shard) : shard(kj::mv(shard)) {}

protected:
  kj::Promise<void> authorize(AuthorizeContext call) override {
    return start(call.getParams().getRequest(), false).then([call](Message m) mutable {
      call.getResults().setResult(m->getRoot<schema::PaymentResult>().asReader());
    });
  }
  kj::Promise<void> purchase(PurchaseContext call) override {
    return start(call.getParams().getRequest(), true).then([call](Message m) mutable {
      call.getResults().setResult(m->getRoot<schema::PaymentResult>().asReader());
    });
  }
  kj::Promise<void> capture(CaptureContext call) override {
    return operate(call.getParams().getRequest(), Op::CAPTURE).then([call](Message m) mutable {
      call.getResults().setResult(m->getRoot<schema::PaymentResult>().asReader());
    });
  }
  kj::Promise<void> voidPayment(VoidPaymentContext call) override {
    return operate(call.getParams().getRequest(), Op::VOID).then([call](Message m) mutable {
      call.getResults().setResult(m->getRoot<schema::PaymentResult>().asReader());
    });
  }
  kj::Promise<void> refund(RefundContext call) override {
    return operate(call.getParams().getRequest(), Op::REFUND).then([call](Message m) mutable {
      call.getResults().setResult(m->getRoot<schema::PaymentResult>().asReader());
    });
  }

  kj::Promise<void> sync(SyncContext call) override {
    shard->check();
    auto id = kj::str(call.getParams().getPaymentId());
    Shard& s = *shard;
    return s.database
        .transaction([id = kj::mv(id)](SqlTransaction& tx) { return loadPayment(tx, id); })
        .then([&s](kj::Maybe<PaymentRow> found) -> kj::Promise<kj::Maybe<PaymentRow>> {
          KJ_IF_MAYBE (p, found) {
            if (p->state == TransactionState::UNKNOWN) return settle(s, kj::mv(*p));
          }
          return kj::mv(found);
        })
        .then([&s, call](kj::Maybe<PaymentRow> found) mutable {
          auto out = call.getResults().initPayment();
          KJ_IF_MAYBE (p, found) {
            out.setExists(true);
            out.setPaymentId(p->id);
            out.setMerchantId(p->merchant);
            // An authorization whose window has closed is expired, whether or not a capture or
            // void has found that out yet (the ledger's hold times out with it).
            bool lapsed = p->state == TransactionState::AUTHORIZED && s.nowMs() >= p->expiresAtMs;
            out.setState(lapsed ? TransactionState::EXPIRED : p->state);
            auto money = [](schema::Money::Builder m, int64_t v, kj::StringPtr c) {
              m.setMinorUnits(v);
              m.setCurrency(c);
            };
            money(out.initAuthorized(), p->authorized, p->currency);
            money(out.initCaptured(), p->captured, p->currency);
            money(out.initRefunded(), p->refunded, p->currency);
            money(out.initSettled(), p->settled, p->settlement);
          }
        });
  }

private:
  enum class Op : uint8_t { CAPTURE, VOID, REFUND };
  kj::Own<Shard> shard;

  kj::Promise<Message> start(schema::PaymentRequest::Reader request, bool purchase) {
    auto merchant = kj::str(request.getMerchantId());
    auto currency = kj::str(request.getAmount().getCurrency());
    int64_t amount = request.getAmount().getMinorUnits();
    auto settlement = request.getSettlementCurrency().size() == 0
                          ? kj::str(currency)
                          : kj::str(request.getSettlementCurrency());
    auto token = kj::str(request.getCardToken());
    auto key = kj::str(request.getIdempotencyKey());
    auto paymentId = paymentIdFor(key);
    auto canonical =
        kj::str(purchase ? "purchase" : "authorize", "|", merchant, "|", amount, "|", currency, "|",
                settlement, "|", token, "|", request.getCardCountry(), "|", request.getIpCountry());
    auto cardCountry = kj::str(request.getCardCountry());
    auto ipCountry = kj::str(request.getIpCountry());
    Shard& s = *shard;
    return s.idempotent(
        key, kj::mv(canonical), kj::str(paymentId),
        [&s, purchase, merchant = kj::mv(merchant), currency = kj::mv(currency), amount,
         settlement = kj::mv(settlement), token = kj::mv(token), paymentId = kj::mv(paymentId),
         cardCountry = kj::mv(cardCountry), ipCountry = kj::mv(ipCountry)](
            kj::Maybe<PaymentRow> existing) mutable -> kj::Promise<Done> {
          KJ_IF_MAYBE (p, existing) {
            // A payment id from a retried claim: it was already recorded.
            if (p->state == TransactionState::UNKNOWN) {
              auto m = newResult();
              m->initRoot<schema::PaymentResult>().setUnknown(p->id);
              return Done{kj::mv(m), p->clone()};
            }
            return Done{approved(p->id, "", p->authorized, p->currency, p->state), p->clone()};
          }
          if (!validText(merchant, 200) || merchant.findFirst(' ') != nullptr) {
            return Done{rejected(schema::RejectCode::INVALID_REQUEST, "bad merchant id"), nullptr};
          }
          if (amount <= 0 || currency.size() != 3 || settlement.size() != 3) {
            return Done{rejected(schema::RejectCode::INVALID_REQUEST,
                                 "amount must be positive, currencies three letters"),
                        nullptr};
          }
          // The amount must be payable in the settlement currency before the card is asked.
          auto quoted = currency == settlement ? kj::Promise<Quoted>(Quoted{amount, nullptr})
                                               : s.quote(amount, currency, settlement);
          return quoted.then([&s, purchase, merchant = kj::mv(merchant),
                              currency = kj::mv(currency), amount, settlement = kj::mv(settlement),
                              token = kj::mv(token), paymentId = kj::mv(paymentId),
                              cardCountry = kj::mv(cardCountry), ipCountry = kj::mv(ipCountry)](
                                 Quoted quote) mutable -> kj::Promise<Done> {
            KJ_IF_MAYBE (refusal, quote.refusal) {
              return Done{rejected(schema::RejectCode::INVALID_REQUEST,
                                   kj::str("cannot settle in ", settlement, ": ", *refusal)),
                          nullptr};
            }
            int64_t settled = quote.amount;
            auto screen = s.fraud.screenRequest();
            auto sr = screen.initRequest();
            sr.setMerchantId(merchant);
            sr.initAmount().setMinorUnits(amount);
            sr.getAmount().setCurrency(currency);
            sr.setCardToken(token);
            sr.setCardCountry(cardCountry);
            sr.setIpCountry(ipCountry);
            return screen.send().then(
                [&s, purchase, merchant = kj::mv(merchant), currency = kj::mv(currency), amount,
                 settlement = kj::mv(settlement), token = kj::mv(token),
                 paymentId = kj::mv(paymentId),
                 settled](capnp::Response<schema::FraudScreen::ScreenResults>&& verdict) mutable
                -> kj::Promise<Done> {
                  auto decision = verdict.getVerdict().getDecision();
                  PaymentRow row;
                  row.id = kj::str(paymentId);
                  row.merchant = kj::str(merchant);
                  row.currency = kj::str(currency);
                  row.settlement = kj::str(settlement);
                  row.cardTxn = kj::str();
                  if (decision == schema::FraudDecision::REJECTED) {
                    return Done{rejected(schema::RejectCode::INVALID_REQUEST,
                                         verdict.getVerdict().getRejection().getMessage()),
                                nullptr};
                  }
                  if (decision == schema::FraudDecision::DENY) {
                    auto m = newResult();
                    auto d = m->initRoot<schema::PaymentResult>().initDeclined();
                    d.setCode(schema::DeclineCode::SUSPECTED_FRAUD);
                    d.setReason("declined by the fraud screen");
                    d.setAdvice(schema::Advice::DO_NOT_RETRY);
                    d.setTransactionId(paymentId);
                    row.state = TransactionState::FAILED;
                    return Done{kj::mv(m), kj::mv(row)};
                  }
                  auto fillAuth = [&](schema::AuthorizeRequest::Builder ar) {
                    ar.setMerchantId(merchant);
                    ar.initAmount().setMinorUnits(amount);
                    ar.getAmount().setCurrency(currency);
                    ar.setCardToken(token);
                    ar.setIdempotencyKey(paymentId);
                  };
                  kj::Promise<Message> sent = nullptr;
                  if (purchase) {
                    auto auth = s.card.purchaseRequest();
                    fillAuth(auth.initRequest());
                    sent = auth.send().then(
                        [](capnp::Response<schema::CardProcessor::PurchaseResults>&& response) {
                          return copyOf(response.getResult());
                        });
                  } else {
                    auto auth = s.card.authorizeRequest();
                    fillAuth(auth.initRequest());
                    sent = auth.send().then(
                        [](capnp::Response<schema::CardProcessor::AuthorizeResults>&& response) {
                          return copyOf(response.getResult());
                        });
                  }
                  return sent.then([&s, purchase, amount, settled,
                                    row = kj::mv(row)](Message m) mutable -> kj::Promise<Done> {
                    auto result = m->getRoot<schema::PaymentResult>();
                    if (result.isDeclined()) {
                      row.state = TransactionState::FAILED;
                      result.getDeclined().setTransactionId(row.id);
                      return Done{kj::mv(m), kj::mv(row)};
                    }
                    if (result.isUnknown()) {
                      // The card's answer was lost: recorded as `unknown` with the card's
                      // transaction id, for `sync` to settle; the merchant syncs on the payment id.
                      row.cardTxn = kj::str(result.getUnknown());
                      row.authorized = amount;
                      row.expiresAtMs = s.nowMs() + s.windowMs;
                      row.state = TransactionState::UNKNOWN;
                      result.setUnknown(row.id);
                      return Done{kj::mv(m), kj::mv(row)};
                    }
                    if (!result.isApproved()) return Done{kj::mv(m), nullptr};
                    auto approval = result.getApproved();
                    row.cardTxn = kj::str(approval.getTransactionId());
                    row.authorized = amount;
                    row.expiresAtMs = s.nowMs() + s.windowMs;
                    auto authCode = kj::str(approval.getAuthCode());
                    auto cardTxn = kj::str(row.cardTxn);
                    return flowLedgerStart(s, kj::mv(row), purchase, kj::mv(authCode), settled)
                        .then([&s, purchase, amount,
                               cardTxn = kj::mv(cardTxn)](Done done) mutable -> kj::Promise<Done> {
                          if (done.payment != nullptr) return kj::mv(done);
                          // The ledger refused what the card approved: give the card its charge
                          // or hold back, so nothing is taken without a record.
                          return compensate(s, purchase, kj::mv(cardTxn), amount,
                                            done.result->getRoot<schema::PaymentResult>())
                              .then([done = kj::mv(done)]() mutable { return kj::mv(done); });
                        });
                  });
                });
          });
        });
  }

  // Refunds (purchase) or voids (authorization) card transaction `cardTxn` after the ledger
  // refused to record it; logged as `payments.compensated` with the card's answer.
  static kj::Promise<void> compensate(Shard& s, bool purchase, kj::String cardTxn, int64_t amount,
                                      schema::PaymentResult::Reader refusal) {
    auto why = kj::str(refusal.isRejected() ? refusal.getRejected().getMessage() : "");
    auto key = kj::str(cardTxn, "/compensate");
    kj::Promise<Message> sent = nullptr;
    if (purchase) {
      auto r = s.card.refundRequest();
      r.initRequest().setTransactionId(cardTxn);
      r.getRequest().initAmount().setMinorUnits(amount);
      r.getRequest().setIdempotencyKey(key);
      sent = r.send().then([](capnp::Response<schema::CardProcessor::RefundResults>&& response) {
        return copyOf(response.getResult());
      });
    } else {
      auto r = s.card.voidAuthorizationRequest();
      r.initRequest().setTransactionId(cardTxn);
      r.getRequest().setIdempotencyKey(key);
      sent = r.send().then(
          [](capnp::Response<schema::CardProcessor::VoidAuthorizationResults>&& response) {
            return copyOf(response.getResult());
          });
    }
    return sent.then([&s, cardTxn = kj::mv(cardTxn), why = kj::mv(why), purchase](Message m) {
      auto result = m->getRoot<schema::PaymentResult>();
      auto outcome =
          kj::str(result.which() == schema::PaymentResult::APPROVED ? "approved" : "refused");
      auto detail = kj::str(result);
      LogField fields[] = {{"card_txn", cardTxn},
                           {"operation", purchase ? "refund" : "void"},
                           {"outcome", outcome},
                           {"card", detail},
                           {"ledger", why}};
      s.context.log().write(result.isApproved() ? LogLevel::WARNING : LogLevel::ERROR,
                            "payments.compensated", fields);
    });
  }

  // Settles a payment whose card outcome was unknown: asks the card processor's `sync`, records
  // what it says in the ledger (the same transfer ids as an answered authorization or purchase,
  // so a concurrent or repeated settlement replays), stores the new row if the stored one is
  // still `unknown`, and returns the stored row. Still unknown, or an answer that cannot be
  // recorded: the row as it is (logged).
  static kj::Promise<kj::Maybe<PaymentRow>> settle(Shard& s, PaymentRow row) {
    auto request = s.card.syncRequest();
    request.setTransactionId(row.cardTxn);
    return request.send().then(
        [&s,
         row = kj::mv(row)](capnp::Response<schema::CardProcessor::SyncResults>&& response) mutable
        -> kj::Promise<kj::Maybe<PaymentRow>> {
          auto result = response.getResult();
          if (result.isApproved()) {
            auto approval = result.getApproved();
            auto state = approval.getState();
            if (state == TransactionState::AUTHORIZED || state == TransactionState::CAPTURED) {
              if (approval.getAmount().getMinorUnits() != row.authorized ||
                  approval.getAmount().getCurrency() != row.currency) {
                return keepUnknown(s, kj::mv(row), "the card's amount differs from the payment's");
              }
              bool purchase = state == TransactionState::CAPTURED;
              auto authCode = kj::str(approval.getAuthCode());
              auto id = kj::str(row.id);
              return flowLedgerStart(s, kj::mv(row), purchase, kj::mv(authCode))
                  .then([&s, id = kj::mv(id)](Done done) mutable {
                    KJ_IF_MAYBE (settled, done.payment) {
                      return store(s, kj::mv(*settled));
                    }
                    auto reason = kj::str(done.result->getRoot<schema::PaymentResult>());
                    return s.database
                        .transaction(
                            [id = kj::mv(id)](SqlTransaction& tx) { return loadPayment(tx, id); })
                        .then([&s, reason = kj::mv(reason)](kj::Maybe<PaymentRow> found) mutable
                              -> kj::Promise<kj::Maybe<PaymentRow>> {
                          KJ_IF_MAYBE (p, found) {
                            return keepUnknown(s, kj::mv(*p), reason);
                          }
                          return kj::mv(found);
                        });
                  });
            }
            if (state == TransactionState::EXPIRED) {
              // Authorized, never captured, and its window has closed: nothing to hold.
              row.state = TransactionState::EXPIRED;
              row.released = true;
              return store(s, kj::mv(row));
            }
            return keepUnknown(s, kj::mv(row), "the card reports an unexpected state");
          }
          bool neverIssued =
              result.isRejected() &&
              result.getRejected().getCode() == schema::RejectCode::UNKNOWN_TRANSACTION &&
              !result.getRejected().getMessage().startsWith("transaction forgotten");
          if (result.isDeclined() || neverIssued) {
            // Declined, or never authorized (the card has no such transaction; one it has
            // forgotten stays unknown): nothing to record in the ledger.
            row.state = TransactionState::FAILED;
            row.authorized = 0;
            return store(s, kj::mv(row));
          }
          if (result.isUnknown() || result.isPending() || result.isNotAttempted()) {
            return kj::Maybe<PaymentRow>(kj::mv(row));
          }
          return keepUnknown(s, kj::mv(row), kj::str(result));
        });
  }

  static kj::Promise<kj::Maybe<PaymentRow>> store(Shard& s, PaymentRow row) {
    DbOp op;
    op.type = DbOp::Type::SETTLE;
    op.paymentId = kj::str(row.id);
    op.payment = kj::mv(row);
    return s.commits.submit(kj::mv(op)).then([&s](DbResult stored) mutable {
      KJ_IF_MAYBE (p, stored.payment) {
        auto state = stateName(p->state);
        LogField fields[] = {{"payment", p->id}, {"state", state}};
        s.context.log().write(LogLevel::INFO, "payments.settled", fields);
      }
      return kj::mv(stored.payment);
    });
  }

  static kj::Maybe<PaymentRow> keepUnknown(Shard& s, PaymentRow row, kj::StringPtr reason) {
    LogField fields[] = {{"payment", row.id}, {"reason", reason}};
    s.context.log().write(LogLevel::WARNING, "payments.unsettled", fields);
    return kj::mv(row);
  }

  // The ledger's part of an approved authorization or purchase. `settled`: the purchase's amount
  // in the settlement currency, if already `quoted`.
  static kj::Promise<Done> flowLedgerStart(Shard& s, PaymentRow row, bool purchase,
                                           kj::String authCode,
                                           kj::Maybe<int64_t> quoted = nullptr) {
    auto credit = creditFor(row);
    auto accounts = kj::joinPromises(
        kj::arr(s.ensureAccount("cards", row.currency, false),
                s.ensureAccount(credit, row.currency, row.currency == row.settlement),
                s.ensureAccount(merchantAccount(row.merchant), row.settlement, true),
                s.ensureAccount("fx", row.settlement, false)));
    return accounts.then([&s, row = kj::mv(row), purchase, authCode = kj::mv(authCode),
                          credit = kj::mv(credit), quoted]() mutable {
      kj::Promise<int64_t> settle = int64_t{0};
      if (purchase) {
        KJ_IF_MAYBE (amount, quoted) {
          settle = *amount;
        } else {
          settle = s.convert(row.authorized, row.currency, row.settlement);
        }
      }
      return settle.then([&s, row = kj::mv(row), purchase, authCode = kj::mv(authCode),
                          credit = kj::mv(credit)](int64_t settled) mutable {
        kj::Vector<LedgerStep> steps;
        if (purchase) {
          steps.add(LedgerStep{kj::str(row.id, "/capture/0"), kj::str("cards"), kj::mv(credit),
                               row.authorized, kj::str(row.currency), schema::TransferKind::POSTED,
                               kj::str()});
          if (row.currency != row.settlement) {
            // Linked with the charge: both legs are recorded, or neither.
            steps.add(LedgerStep{kj::str(row.id, "/settle/0"), kj::str("fx"),
                                 merchantAccount(row.merchant), settled, kj::str(row.settlement),
                                 schema::TransferKind::POSTED, kj::str()});
          }
        } else {
          steps.add(LedgerStep{kj::str(row.id, "/hold/0"), kj::str("cards"), kj::mv(credit),
                               row.authorized, kj::str(row.currency), schema::TransferKind::PENDING,
                               kj::str(), s.windowMs});
        }
        auto first = s.post(steps.releaseAsArray());
        return first.then([row = kj::mv(row), purchase, authCode = kj::mv(authCode),
                           settled](kj::Maybe<kj::String> refusal) mutable -> Done {
          KJ_IF_MAYBE (message, refusal) {
            return Done{ledgerFailed(*message), nullptr};
          }
          if (purchase) {
            row.captured = row.authorized;
            row.captures = 1;
            row.settled = settled;
            row.state = TransactionState::CAPTURED;
          } else {
            row.state = TransactionState::AUTHORIZED;
          }
          auto m = approved(row.id, authCode, row.authorized, row.currency, row.state);
          return Done{kj::mv(m), kj::mv(row)};
        });
      });
    });
  }

  kj::Promise<Message> operate(schema::PaymentOperation::Reader request, Op op) {
    auto id = kj::str(request.getPaymentId());
    int64_t amount = op == Op::VOID ? 0 : request.getAmount().getMinorUnits();
    auto currency = kj::str(request.getAmount().getCurrency());
    auto key = kj::str(request.getIdempotencyKey());
    auto canonical = kj::str(op == Op::CAPTURE ? "capture"
                             : op == Op::VOID  ? "void"
                                               : "refund",
                             "|", id, "|", amount, "|", op == Op::VOID ? "" : currency.cStr());
    Shard& s = *shard;
    return s.idempotent(
        key, kj::mv(canonical), kj::str(id),
        [&s, op, amount, currency = kj::mv(currency),
         key = kj::str(key)](kj::Maybe<PaymentRow> found) mutable -> kj::Promise<Done> {
          PaymentRow* p = nullptr;
          KJ_IF_MAYBE (row, found) {
            p = row;
          }
          if (p == nullptr) {
            return Done{rejected(schema::RejectCode::UNKNOWN_TRANSACTION, "no such payment"),
                        nullptr};
          }
          auto state = p->state;
          bool open = state == TransactionState::AUTHORIZED ||
                      state == TransactionState::PARTIALLY_CAPTURED;
          if (op != Op::REFUND && open && s.nowMs() >= p->expiresAtMs) {
            // The authorization window has closed: nothing more can be captured or voided. An
            // untouched authorization is expired; a partly captured one keeps its state, and its
            // captured part stays refundable. The first such call releases the hold.
            auto closed = rejected(schema::RejectCode::INVALID_STATE,
                                   p->captured == 0 ? "the authorization expired"
                                                    : "the authorization window has closed");
            if (p->released) return Done{kj::mv(closed), nullptr};
            if (p->captured == 0) p->state = TransactionState::EXPIRED;
            p->released = true;
            auto row = p->clone();
            return s
                .post(kj::arr(LedgerStep{kj::str(row.id, "/release"), kj::str(), kj::str(), 0,
                                         kj::str(row.currency), schema::TransferKind::VOID_PENDING,
                                         kj::str(row.id, "/hold/", row.captures)}))
                .then([row = kj::mv(row), closed = kj::mv(closed)](kj::Maybe<kj::String>) mutable {
                  // The ledger may have expired the hold itself already: either way it is gone.
                  return Done{kj::mv(closed), kj::mv(row)};
                });
          }
          if (op != Op::VOID && currency != p->currency) {
            return Done{rejected(schema::RejectCode::CURRENCY_MISMATCH,
                                 kj::str("the payment is in ", p->currency)),
                        nullptr};
          }
          if (op != Op::VOID && amount <= 0) {
            return Done{rejected(schema::RejectCode::INVALID_REQUEST, "amount must be positive"),
                        nullptr};
          }
          switch (op) {
            case Op::CAPTURE:
              if (!open) {
                return Done{
                    rejected(schema::RejectCode::INVALID_STATE,
                             kj::str("cannot capture a payment that is ", stateName(state))),
                    nullptr};
              }
              if (amount > p->authorized - p->captured) {
                return Done{rejected(schema::RejectCode::AMOUNT_EXCEEDS_AVAILABLE,
                                     kj::str("capture above the uncaptured rest (",
                                             p->authorized - p->captured, ")")),
                            nullptr};
              }
              break;
            case Op::VOID:
              if (state != TransactionState::AUTHORIZED) {
                return Done{rejected(schema::RejectCode::INVALID_STATE,
                                     kj::str("cannot void a payment that is ", stateName(state))),
                            nullptr};
              }
              break;
            case Op::REFUND:
              if (state != TransactionState::CAPTURED &&
                  state != TransactionState::PARTIALLY_CAPTURED &&
                  state != TransactionState::PARTIALLY_REFUNDED) {
                return Done{rejected(schema::RejectCode::INVALID_STATE,
                                     kj::str("cannot refund a payment that is ", stateName(state))),
                            nullptr};
              }
              if (amount > p->captured - p->refunded) {
                return Done{rejected(schema::RejectCode::AMOUNT_EXCEEDS_AVAILABLE,
                                     kj::str("refund above the captured rest (",
                                             p->captured - p->refunded, ")")),
                            nullptr};
              }
              break;
          }
          return cardStep(s, op, p->clone(), amount, key);
        });
  }

  static kj::StringPtr stateName(TransactionState state) {
    switch (state) {
      case TransactionState::AUTHORIZED:
        return "authorized";
      case TransactionState::PARTIALLY_CAPTURED:
        return "partially captured";
      case TransactionState::CAPTURED:
        return "captured";
      case TransactionState::VOIDED:
        return "voided";
      case TransactionState::PARTIALLY_REFUNDED:
        return "partially refunded";
      case TransactionState::REFUNDED:
        return "refunded";
      case TransactionState::EXPIRED:
        return "expired";
      case TransactionState::FAILED:
        return "failed";
      case TransactionState::UNKNOWN:
        return "unknown (settle it with sync first)";
      case TransactionState::UNSPECIFIED:
        break;
    }
    return "unknown";
  }

  // The card processor's part of a capture, void or refund, then the ledger's.
  static kj::Promise<Done> cardStep(Shard& s, Op op, PaymentRow row, int64_t amount,
                                    kj::StringPtr key) {
    kj::Promise<capnp::Response<schema::CardProcessor::CaptureResults>> sent = nullptr;
    auto cardKey = kj::str(row.id,
                           op == Op::CAPTURE  ? "/capture/"
                           : op == Op::REFUND ? "/refund/"
                                              : "/void",
                           op == Op::CAPTURE  ? kj::str(row.captures)
                           : op == Op::REFUND ? kj::str(row.refunds)
                                              : kj::str());
    auto setMoney = [&](schema::Money::Builder m) {
      m.setMinorUnits(amount);
      m.setCurrency(row.currency);
    };
    kj::Promise<schema::PaymentResult::Reader> unused = nullptr;
    (void)unused;
    kj::Promise<Message> card = nullptr;
    if (op == Op::CAPTURE) {
      auto r = s.card.captureRequest();
      r.initRequest().setTransactionId(row.cardTxn);
      setMoney(r.getRequest().initAmount());
      r.getRequest().setIdempotencyKey(cardKey);
      card = r.send().then([](capnp::Response<schema::CardProcessor::CaptureResults>&& response) {
        return copyOf(response.getResult());
      });
    } else if (op == Op::REFUND) {
      auto r = s.card.refundRequest();
      r.initRequest().setTransactionId(row.cardTxn);
      setMoney(r.getRequest().initAmount());
      r.getRequest().setIdempotencyKey(cardKey);
      card = r.send().then([](capnp::Response<schema::CardProcessor::RefundResults>&& response) {
        return copyOf(response.getResult());
      });
    } else {
      auto r = s.card.voidAuthorizationRequest();
      r.initRequest().setTransactionId(row.cardTxn);
      r.getRequest().setIdempotencyKey(cardKey);
      card = r.send().then(
          [](capnp::Response<schema::CardProcessor::VoidAuthorizationResults>&& response) {
            return copyOf(response.getResult());
          });
    }
    return card.then([&s, op, row = kj::mv(row), amount](Message m) mutable -> kj::Promise<Done> {
      auto result = m->getRoot<schema::PaymentResult>();
      if (!result.isApproved()) return Done{kj::mv(m), nullptr};
      auto authCode = kj::str(result.getApproved().getAuthCode());
      return ledgerStep(s, op, kj::mv(row), amount, kj::mv(authCode));
    });
  }

  // What a refund of `amount` takes back from the merchant in the settlement currency: its share
  // of what the captures settled (rounded down), the refund that empties the payment taking the
  // rest. Refunds thus return exactly what was settled, at the rates the captures used: converting
  // each part anew could round (or a changed rate could move) past what the merchant was given.
  static int64_t refundShare(const PaymentRow& row, int64_t amount) {
    int64_t open = row.captured - row.refunded;
    if (amount >= open) return row.settled;
    __extension__ using Wide = __int128;
    return static_cast<int64_t>(Wide(row.settled) * amount / open);
  }

  static kj::Promise<Done> ledgerStep(Shard& s, Op op, PaymentRow row, int64_t amount,
                                      kj::String authCode) {
    bool fx = row.currency != row.settlement;
    auto merchant = merchantAccount(row.merchant);
    auto credit = creditFor(row);
    auto hold = kj::str(row.id, "/hold/", row.captures);
    auto converted = op == Op::VOID     ? kj::Promise<int64_t>(int64_t{0})
                     : op == Op::REFUND ? kj::Promise<int64_t>(refundShare(row, amount))
                                        : s.convert(amount, row.currency, row.settlement);
    return converted.then([&s, op, row = kj::mv(row), amount, authCode = kj::mv(authCode), fx,
                           merchant = kj::mv(merchant), credit = kj::mv(credit),
                           hold = kj::mv(hold)](int64_t settledAmount) mutable {
      // Both currencies' legs in one linked chain: all recorded, or none. A refund lists the
      // merchant's settlement leg first, so the refusal names its limit before the card's leg.
      kj::Vector<LedgerStep> chain;
      switch (op) {
        case Op::CAPTURE: {
          chain.add(LedgerStep{kj::str(row.id, "/capture/", row.captures), kj::str(), kj::str(),
                               amount, kj::str(row.currency), schema::TransferKind::POST_PENDING,
                               kj::str(hold)});
          int64_t rest = row.authorized - row.captured - amount;
          int64_t timeout = row.expiresAtMs - s.nowMs();
          if (rest > 0) {
            chain.add(LedgerStep{kj::str(row.id, "/hold/", row.captures + 1), kj::str("cards"),
                                 kj::str(credit), rest, kj::str(row.currency),
                                 schema::TransferKind::PENDING, kj::str(),
                                 timeout > 0 ? timeout : 1});
          }
          if (fx) {
            chain.add(LedgerStep{kj::str(row.id, "/settle/", row.captures), kj::str("fx"),
                                 kj::str(merchant), settledAmount, kj::str(row.settlement),
                                 schema::TransferKind::POSTED, kj::str()});
          }
          row.captured += amount;
          row.settled += settledAmount;
          row.captures += 1;
          row.state = row.captured == row.authorized ? TransactionState::CAPTURED
                                                     : TransactionState::PARTIALLY_CAPTURED;
          break;
        }
        case Op::VOID:
          chain.add(LedgerStep{kj::str(row.id, "/void"), kj::str(), kj::str(), 0,
                               kj::str(row.currency), schema::TransferKind::VOID_PENDING,
                               kj::mv(hold)});
          row.state = TransactionState::VOIDED;
          row.released = true;
          break;
        case Op::REFUND: {
          if (fx) {
            chain.add(LedgerStep{kj::str(row.id, "/unsettle/", row.refunds), kj::str(merchant),
                                 kj::str("fx"), settledAmount, kj::str(row.settlement),
                                 schema::TransferKind::POSTED, kj::str()});
          }
          if (row.captured < row.authorized && !row.released) {
            chain.add(LedgerStep{kj::str(row.id, "/release"), kj::str(), kj::str(), 0,
                                 kj::str(row.currency), schema::TransferKind::VOID_PENDING,
                                 kj::mv(hold)});
            row.released = true;
          }
          chain.add(LedgerStep{kj::str(row.id, "/refund/", row.refunds), kj::str(credit),
                               kj::str("cards"), amount, kj::str(row.currency),
                               schema::TransferKind::POSTED, kj::str()});
          row.refunded += amount;
          row.settled -= settledAmount;
          row.refunds += 1;
          row.state = row.refunded == row.captured ? TransactionState::REFUNDED
                                                   : TransactionState::PARTIALLY_REFUNDED;
          break;
        }
      }
      return s.post(chain.releaseAsArray())
          .then([row = kj::mv(row), amount,
                 authCode = kj::mv(authCode)](kj::Maybe<kj::String> refusal) mutable {
            KJ_IF_MAYBE (message, refusal) {
              return Done{ledgerFailed(*message), nullptr};
            }
            auto m = approved(row.id, authCode, amount, row.currency, row.state);
            return Done{kj::mv(m), kj::mv(row)};
          });
    });
  }
};

class PaymentsPlugin final : public Plugin {
public:
  explicit PaymentsPlugin(Context& context)
      : database(context.sql(context.config().string("database", "payments"))),
        shard(kj::refcounted<Shard>(context, database,
                                    context.config().integer("auth_window_s", 7 * 24 * 3600) * 1000,
                                    context.config().integer("claim_timeout_ms", 30'000))) {}
  ~PaymentsPlugin() noexcept(false) override { shard->detach(); }
  KJ_DISALLOW_COPY(PaymentsPlugin);

  capnp::Capability::Client service(kj::StringPtr name) override {
    KJ_REQUIRE(name == SERVICE_NAME, "payments provides only payments.payments", name);
    return serve<PaymentsServer>(kj::addRef(*shard));
  }

  kj::Promise<void> ready() override {
    return database.transaction([](SqlTransaction& tx) { createSchema(tx); })
        .catch_([this](kj::Exception&&) {
          return database.transaction([](SqlTransaction& tx) { createSchema(tx); });
        });
  }

private:
  Database& database;
  kj::Own<Shard> shard;
};

}  // namespace
}  // namespace payhost::plugins::payments

PAYHOST_PLUGIN(payhost::plugins::payments::PaymentsPlugin, "payments", "1.0.0",
               PAYHOST_SERVICE("payments.payments", payhost::schema::Payments));
