// The card-processor plugin as the host sees it: through its descriptor, the SDK's test host and
// real Cap'n Proto requests on "payments.card".

#include <payhost/abi.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <capnp/capability.h>
#include <kj/debug.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <limits>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "../on-another-thread.h"
#include "print.h"
#include "shared-issuer.h"

namespace payhost::plugins::card {
namespace {

using schema::CardProcessor;
using schema::PaymentResult;
using schema::RejectCode;
using schema::TransactionState;

constexpr int64_t INT64_MAX_ = std::numeric_limits<int64_t>::max();

bool contains(kj::StringPtr haystack, kj::StringPtr needle) {
  return std::string_view(haystack.cStr()).find(needle.cStr()) != std::string_view::npos;
}

// What transaction ids start with: "txn_", the issuer's epoch (twelve hexadecimal digits) and
// "_"; null when `id` is not of that form.
kj::Maybe<kj::String> idPrefixOf(kj::StringPtr id) {
  constexpr size_t PREFIX = 4 + 12 + 1;
  if (id.size() <= PREFIX || !id.startsWith("txn_") || id[PREFIX - 1] != '_') return nullptr;
  for (char c : id.slice(4, PREFIX - 1)) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return nullptr;
  }
  return kj::heapString(id.slice(0, PREFIX));
}

kj::String idPrefix(kj::StringPtr id) {
  KJ_IF_MAYBE (prefix, idPrefixOf(id)) {
    return kj::mv(*prefix);
  }
  KJ_FAIL_ASSERT("not a transaction id of the form txn_<epoch>_<n>", id);
}

// The id of the `n`-th transaction of the issuer that issued `id`.
kj::String nthId(kj::StringPtr id, uint64_t n) {
  return kj::str(idPrefix(id), n);
}

::testing::AssertionResult isNthId(kj::StringPtr id, uint64_t n) {
  KJ_IF_MAYBE (prefix, idPrefixOf(id)) {
    if (id == kj::str(*prefix, n)) return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "expected transaction " << n << " (txn_<epoch>_" << n << "), got " << id.cStr();
}

// One plugin instance on the test host, and a client of its card service.
//
// A local call is dispatched on the event loop's next turn and `TestHost::advanceTime` moves the
// clock before it runs the loop, so tests poll a sent call once before advancing time: otherwise
// its delays would start at the later time.
class Harness {
public:
  explicit Harness(kj::StringPtr config = "latency_ms = 0")
      : host(*payhostPluginDescriptor(), config),
        card(host.service<CardProcessor>("payments.card")) {}

  capnp::RemotePromise<CardProcessor::AuthorizeResults> sendAuthorize(
      kj::StringPtr token, int64_t amount, kj::StringPtr key, kj::StringPtr currency = "EUR",
      kj::StringPtr merchant = "m_1") {
    auto request = card.authorizeRequest();
    auto body = request.initRequest();
    body.setMerchantId(merchant);
    auto money = body.initAmount();
    money.setMinorUnits(amount);
    money.setCurrency(currency);
    body.setCardToken(token);
    body.setIdempotencyKey(key);
    return request.send();
  }

  capnp::Response<CardProcessor::AuthorizeResults> authorize(kj::StringPtr token, int64_t amount,
                                                             kj::StringPtr key,
                                                             kj::StringPtr currency = "EUR",
                                                             kj::StringPtr merchant = "m_1") {
    return sendAuthorize(token, amount, key, currency, merchant).wait(host.waitScope());
  }

  capnp::Response<CardProcessor::PurchaseResults> purchase(kj::StringPtr token, int64_t amount,
                                                           kj::StringPtr key) {
    auto request = card.purchaseRequest();
    auto body = request.initRequest();
    body.setMerchantId("m_1");
    auto money = body.initAmount();
    money.setMinorUnits(amount);
    money.setCurrency("EUR");
    body.setCardToken(token);
    body.setIdempotencyKey(key);
    return request.send().wait(host.waitScope());
  }

  capnp::Response<CardProcessor::CaptureResults> capture(kj::StringPtr id, int64_t amount,
                                                         kj::StringPtr key,
                                                         kj::StringPtr currency = "EUR") {
    auto request = card.captureRequest();
    auto body = request.initRequest();
    body.setTransactionId(id);
    auto money = body.initAmount();
    money.setMinorUnits(amount);
    money.setCurrency(currency);
    body.setIdempotencyKey(key);
    return request.send().wait(host.waitScope());
  }

  capnp::Response<CardProcessor::VoidAuthorizationResults> voidAuthorization(kj::StringPtr id,
                                                                             kj::StringPtr key) {
    auto request = card.voidAuthorizationRequest();
    auto body = request.initRequest();
    body.setTransactionId(id);
    body.setIdempotencyKey(key);
    return request.send().wait(host.waitScope());
  }

  capnp::Response<CardProcessor::RefundResults> refund(kj::StringPtr id, int64_t amount,
                                                       kj::StringPtr key,
                                                       kj::StringPtr currency = "EUR") {
    auto request = card.refundRequest();
    auto body = request.initRequest();
    body.setTransactionId(id);
    auto money = body.initAmount();
    money.setMinorUnits(amount);
    money.setCurrency(currency);
    body.setIdempotencyKey(key);
    return request.send().wait(host.waitScope());
  }

  capnp::RemotePromise<CardProcessor::SyncResults> sendSync(kj::StringPtr id) {
    auto request = card.syncRequest();
    request.setTransactionId(id);
    return request.send();
  }

  capnp::Response<CardProcessor::SyncResults> sync(kj::StringPtr id) {
    return sendSync(id).wait(host.waitScope());
  }

  // Authorizes `amount` EUR on the approving card and returns the transaction id.
  kj::String authorized(int64_t amount, kj::StringPtr key) {
    auto response = authorize("tok_visa_approve", amount, key);
    auto result = response.getResult();
    KJ_ASSERT(result.isApproved(), result.toString().flatten());
    return kj::heapString(result.getApproved().getTransactionId());
  }

  TransactionState stateOf(kj::StringPtr id) {
    auto response = sync(id);
    auto result = response.getResult();
    KJ_ASSERT(result.isApproved(), result.toString().flatten());
    return result.getApproved().getState();
  }

  payhost::testing::TestHost host;
  CardProcessor::Client card;
};

::testing::AssertionResult isApproved(PaymentResult::Reader result, TransactionState state) {
  if (result.isApproved() && result.getApproved().getState() == state) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected approved with state " << static_cast<int>(state)
                                       << ", got " << result.toString().flatten().cStr();
}

::testing::AssertionResult isDeclined(PaymentResult::Reader result, schema::DeclineCode code,
                                      schema::Advice advice) {
  if (result.isDeclined() && result.getDeclined().getCode() == code &&
      result.getDeclined().getAdvice() == advice) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected declined " << static_cast<int>(code) << ", got "
                                       << result.toString().flatten().cStr();
}

::testing::AssertionResult isRejected(PaymentResult::Reader result, RejectCode code) {
  if (result.isRejected() && result.getRejected().getCode() == code) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected rejected " << static_cast<int>(code) << ", got "
                                       << result.toString().flatten().cStr();
}

// ---------------------------------------------------------------------------------------------

TEST(CardProcessor, DeclaresOneCardService) {
  auto& plugin = *payhostPluginDescriptor();
  EXPECT_EQ(kj::StringPtr(plugin.name), "card-processor");
  EXPECT_EQ(kj::StringPtr(plugin.version), "1.0.0");
  ASSERT_EQ(plugin.service_count, 1u);
  EXPECT_EQ(kj::StringPtr(plugin.services[0].name), "payments.card");
  EXPECT_EQ(plugin.services[0].interface_id, capnp::typeId<CardProcessor>());
  EXPECT_EQ(plugin.abi_major, PAYHOST_ABI_MAJOR);
}

TEST(CardProcessor, ApprovesWithTransactionIdAndAuthCode) {
  Harness card;
  auto response = card.authorize("tok_visa_approve", 1250, "order-1");
  auto result = response.getResult();
  ASSERT_TRUE(isApproved(result, TransactionState::AUTHORIZED));
  auto approval = result.getApproved();
  EXPECT_TRUE(isNthId(approval.getTransactionId(), 1));
  EXPECT_EQ(approval.getAuthCode().size(), 6u);
  EXPECT_EQ(approval.getAuthCode(), authCodeFor("order-1"));
  EXPECT_EQ(approval.getAmount().getMinorUnits(), 1250);
  EXPECT_EQ(approval.getAmount().getCurrency(), "EUR");
}

TEST(CardProcessor, DeclinesTestCardsAndTestAmounts) {
  Harness card("max_amount_minor = 5000");
  EXPECT_TRUE(isDeclined(card.authorize("tok_insufficient_funds", 100, "k1").getResult(),
                         schema::DeclineCode::INSUFFICIENT_FUNDS, schema::Advice::RETRY_LATER));
  EXPECT_TRUE(isDeclined(card.authorize("tok_stolen", 100, "k2").getResult(),
                         schema::DeclineCode::STOLEN_CARD, schema::Advice::DO_NOT_RETRY));
  EXPECT_TRUE(isDeclined(card.authorize("tok_expired", 100, "k3").getResult(),
                         schema::DeclineCode::EXPIRED_CARD, schema::Advice::DO_NOT_RETRY));
  EXPECT_TRUE(isDeclined(card.authorize("tok_visa_approve", 1051, "k4").getResult(),
                         schema::DeclineCode::DO_NOT_HONOR, schema::Advice::CONTACT_ISSUER));
  EXPECT_TRUE(isDeclined(card.authorize("tok_visa_approve", 5001, "k5").getResult(),
                         schema::DeclineCode::AMOUNT_LIMIT_EXCEEDED, schema::Advice::DO_NOT_RETRY));
  auto response = card.authorize("tok_stolen", 100, "k6");
  auto decline = response.getResult().getDeclined();
  EXPECT_TRUE(isNthId(decline.getTransactionId(), 6));
  EXPECT_GT(decline.getReason().size(), 0u);
  // A declined authorization is a transaction too: sync repeats the decline.
  EXPECT_TRUE(isDeclined(card.sync(decline.getTransactionId()).getResult(),
                         schema::DeclineCode::STOLEN_CARD, schema::Advice::DO_NOT_RETRY));
}

TEST(CardProcessor, RejectsInvalidRequests) {
  Harness card;
  auto longKey = kj::heapString(256);
  for (auto& c : longKey)
    c = 'k';
  EXPECT_TRUE(isRejected(card.authorize("tok_visa_approve", 100, "k1", "EUR", "").getResult(),
                         RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(card.authorize("tok_visa_approve", 0, "k1").getResult(),
                         RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(card.authorize("tok_visa_approve", -100, "k1").getResult(),
                         RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(card.authorize("tok_visa_approve", 100, "k1", "eu").getResult(),
                         RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(card.authorize("tok_visa_approve", 100, "").getResult(),
                         RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(card.authorize("tok_visa_approve", 100, longKey).getResult(),
                         RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(
      isRejected(card.authorize("visa", 100, "k1").getResult(), RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(card.capture("", 100, "c1").getResult(), RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(card.refund("txn_0_1", 0, "r1").getResult(), RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(
      isRejected(card.voidAuthorization("txn_0_1", "").getResult(), RejectCode::INVALID_REQUEST));
}

TEST(CardProcessor, NeverEchoesOrLogsACardNumber) {
  Harness card;
  for (kj::StringPtr pan : {"4111111111111111"_kj, "4111 1111 1111 1111"_kj}) {
    auto response = card.authorize(pan, 100, "k1");
    auto result = response.getResult();
    ASSERT_TRUE(isRejected(result, RejectCode::INVALID_REQUEST));
    EXPECT_FALSE(contains(result.getRejected().getMessage(), "4111"));
  }
  // A vault token wrapped around a card number is served but logged redacted.
  EXPECT_TRUE(isApproved(card.authorize("tok_4111111111111111", 100, "k2").getResult(),
                         TransactionState::AUTHORIZED));
  // An unknown transaction id is the caller's text: not logged either.
  EXPECT_TRUE(
      isRejected(card.sync("4111111111111111").getResult(), RejectCode::UNKNOWN_TRANSACTION));

  auto logs = card.host.logs();
  ASSERT_EQ(logs.size(), 4u);
  for (auto& record : logs) {
    EXPECT_FALSE(contains(record.line, "4111")) << record.line.cStr();
  }
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(contains(logs[i].line, "token=[redacted]")) << logs[i].line.cStr();
  }
}

TEST(CardProcessor, LogsOneRecordPerOperation) {
  Harness card;
  auto id = card.authorized(1000, "a1");
  EXPECT_TRUE(isApproved(card.capture(id, 1000, "c1").getResult(), TransactionState::CAPTURED));
  EXPECT_TRUE(
      isApproved(card.refund(id, 100, "r1").getResult(), TransactionState::PARTIALLY_REFUNDED));
  auto other = card.authorized(1000, "a2");
  EXPECT_TRUE(
      isApproved(card.voidAuthorization(other, "v1").getResult(), TransactionState::VOIDED));
  EXPECT_TRUE(isApproved(card.sync(id).getResult(), TransactionState::PARTIALLY_REFUNDED));
  EXPECT_TRUE(isDeclined(card.authorize("tok_insufficient_funds", 100, "a3").getResult(),
                         schema::DeclineCode::INSUFFICIENT_FUNDS, schema::Advice::RETRY_LATER));
  EXPECT_TRUE(isApproved(card.authorize("tok_visa_approve", 1000, "a1").getResult(),
                         TransactionState::AUTHORIZED));

  auto logs = card.host.logs();
  ASSERT_EQ(logs.size(), 8u);
  kj::StringPtr events[] = {"card.authorize", "card.capture", "card.refund",    "card.authorize",
                            "card.void",      "card.sync",    "card.authorize", "card.authorize"};
  for (size_t i = 0; i < logs.size(); ++i) {
    EXPECT_EQ(logs[i].level, LogLevel::INFO);
    EXPECT_EQ(logs[i].event, events[i]);
  }
  EXPECT_TRUE(isNthId(id, 1));
  EXPECT_EQ(logs[0].line,
            kj::str("card.authorize merchant=m_1 amount=1000 currency=EUR token=tok_visa_approve "
                    "transaction=",
                    id, " outcome=approved state=authorized"));
  EXPECT_EQ(logs[1].line, kj::str("card.capture amount=1000 currency=EUR transaction=", id,
                                  " outcome=approved state=captured"));
  EXPECT_TRUE(contains(logs[6].line, "outcome=declined code=insufficientFunds advice=retryLater"))
      << logs[6].line.cStr();
  EXPECT_TRUE(contains(logs[7].line, "replayed=true")) << logs[7].line.cStr();
}

TEST(CardProcessor, RunsTheWholeLifecycle) {
  Harness card;
  auto id = card.authorized(1000, "a1");
  auto first = card.capture(id, 400, "c1");
  ASSERT_TRUE(isApproved(first.getResult(), TransactionState::PARTIALLY_CAPTURED));
  EXPECT_EQ(first.getResult().getApproved().getAmount().getMinorUnits(), 400);
  EXPECT_TRUE(isApproved(card.capture(id, 600, "c2").getResult(), TransactionState::CAPTURED));
  EXPECT_TRUE(
      isApproved(card.refund(id, 300, "r1").getResult(), TransactionState::PARTIALLY_REFUNDED));
  auto last = card.refund(id, 700, "r2");
  ASSERT_TRUE(isApproved(last.getResult(), TransactionState::REFUNDED));
  EXPECT_EQ(last.getResult().getApproved().getAmount().getMinorUnits(), 700);
  EXPECT_EQ(last.getResult().getApproved().getAuthCode(), authCodeFor("a1"));

  auto synced = card.sync(id);
  ASSERT_TRUE(isApproved(synced.getResult(), TransactionState::REFUNDED));
  EXPECT_EQ(synced.getResult().getApproved().getAmount().getMinorUnits(), 1000);
}

TEST(CardProcessor, TimeoutIsUnknownUntilSynced) {
  Harness card;
  auto response = card.authorize("tok_timeout", 1000, "a1");
  auto result = response.getResult();
  ASSERT_TRUE(result.isUnknown()) << result.toString().flatten().cStr();
  auto id = kj::heapString(result.getUnknown());
  EXPECT_TRUE(isNthId(id, 1));
  EXPECT_TRUE(isApproved(card.sync(id).getResult(), TransactionState::AUTHORIZED));
  EXPECT_TRUE(isApproved(card.capture(id, 1000, "c1").getResult(), TransactionState::CAPTURED));
}

TEST(CardProcessor, SlowCardAnswersAfterTheDefaultDelay) {
  Harness card;
  auto promise = card.sendAuthorize("tok_slow", 1000, "a1");
  EXPECT_FALSE(promise.poll(card.host.waitScope()));
  card.host.advanceTime(1999 * kj::MILLISECONDS);
  EXPECT_FALSE(promise.poll(card.host.waitScope()));
  card.host.advanceTime(1 * kj::MILLISECONDS);
  ASSERT_TRUE(promise.poll(card.host.waitScope()));
  auto response = promise.wait(card.host.waitScope());
  EXPECT_TRUE(isApproved(response.getResult(), TransactionState::AUTHORIZED));
}

TEST(CardProcessor, SlowCardDelayComesFromConfig) {
  Harness card("slow_ms = 10");
  auto promise = card.sendAuthorize("tok_slow", 1000, "a1");
  EXPECT_FALSE(promise.poll(card.host.waitScope()));
  card.host.advanceTime(9 * kj::MILLISECONDS);
  EXPECT_FALSE(promise.poll(card.host.waitScope()));
  card.host.advanceTime(1 * kj::MILLISECONDS);
  ASSERT_TRUE(promise.poll(card.host.waitScope()));
  EXPECT_TRUE(
      isApproved(promise.wait(card.host.waitScope()).getResult(), TransactionState::AUTHORIZED));
}

TEST(CardProcessor, ASlowAnswerGivenUpOnIsFoundByRetrying) {
  Harness card;
  {
    auto abandoned = card.sendAuthorize("tok_slow", 1000, "a1");
    EXPECT_FALSE(abandoned.poll(card.host.waitScope()));
  }
  // The issuer did authorize; the retry answers from memory without the delay.
  auto promise = card.sendAuthorize("tok_slow", 1000, "a1");
  ASSERT_TRUE(promise.poll(card.host.waitScope()));
  auto response = promise.wait(card.host.waitScope());
  ASSERT_TRUE(isApproved(response.getResult(), TransactionState::AUTHORIZED));
  EXPECT_TRUE(isNthId(response.getResult().getApproved().getTransactionId(), 1));
}

TEST(CardProcessor, LatencyDelaysEveryCall) {
  Harness card("latency_ms = 50");
  auto authorize = card.sendAuthorize("tok_visa_approve", 1000, "a1");
  EXPECT_FALSE(authorize.poll(card.host.waitScope()));
  card.host.advanceTime(49 * kj::MILLISECONDS);
  EXPECT_FALSE(authorize.poll(card.host.waitScope()));
  card.host.advanceTime(1 * kj::MILLISECONDS);
  ASSERT_TRUE(authorize.poll(card.host.waitScope()));
  auto id = kj::heapString(
      authorize.wait(card.host.waitScope()).getResult().getApproved().getTransactionId());

  auto sync = card.sendSync(id);
  EXPECT_FALSE(sync.poll(card.host.waitScope()));
  card.host.advanceTime(50 * kj::MILLISECONDS);
  ASSERT_TRUE(sync.poll(card.host.waitScope()));
  EXPECT_TRUE(
      isApproved(sync.wait(card.host.waitScope()).getResult(), TransactionState::AUTHORIZED));
}

TEST(CardProcessor, ACallCancelledDuringLatencyHasNoEffect) {
  Harness card("latency_ms = 50");
  {
    auto cancelled = card.sendAuthorize("tok_visa_approve", 1000, "a1");
    EXPECT_FALSE(cancelled.poll(card.host.waitScope()));
  }
  card.host.advanceTime(50 * kj::MILLISECONDS);
  EXPECT_EQ(card.host.logs().size(), 0u);
  // Nothing remembered the key: other parameters under it are no conflict.
  auto promise = card.sendAuthorize("tok_visa_approve", 2000, "a1");
  EXPECT_FALSE(promise.poll(card.host.waitScope()));
  card.host.advanceTime(50 * kj::MILLISECONDS);
  ASSERT_TRUE(promise.poll(card.host.waitScope()));
  auto response = promise.wait(card.host.waitScope());
  ASSERT_TRUE(isApproved(response.getResult(), TransactionState::AUTHORIZED));
  EXPECT_TRUE(isNthId(response.getResult().getApproved().getTransactionId(), 1));
}

TEST(CardProcessor, ReplaysAndRefusesReusedIdempotencyKeys) {
  Harness card;
  auto id = card.authorized(1000, "a1");
  auto replay = card.authorize("tok_visa_approve", 1000, "a1");
  ASSERT_TRUE(isApproved(replay.getResult(), TransactionState::AUTHORIZED));
  EXPECT_EQ(replay.getResult().getApproved().getTransactionId(), id);
  EXPECT_TRUE(isRejected(card.authorize("tok_visa_approve", 1001, "a1").getResult(),
                         RejectCode::IDEMPOTENCY_CONFLICT));

  EXPECT_TRUE(
      isApproved(card.capture(id, 500, "c1").getResult(), TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(
      isApproved(card.capture(id, 500, "c1").getResult(), TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(
      isRejected(card.capture(id, 400, "c1").getResult(), RejectCode::IDEMPOTENCY_CONFLICT));
  EXPECT_EQ(card.stateOf(id), TransactionState::PARTIALLY_CAPTURED);
  EXPECT_TRUE(isApproved(card.capture(id, 500, "c2").getResult(), TransactionState::CAPTURED));
}

TEST(CardProcessor, RejectsOverCaptureAndRefundAboveCaptured) {
  Harness card;
  auto id = card.authorized(1000, "a1");
  EXPECT_TRUE(
      isRejected(card.capture(id, 1001, "c1").getResult(), RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_TRUE(
      isApproved(card.capture(id, 800, "c2").getResult(), TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(
      isRejected(card.refund(id, 801, "r1").getResult(), RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_TRUE(
      isApproved(card.refund(id, 500, "r2").getResult(), TransactionState::PARTIALLY_REFUNDED));
  EXPECT_TRUE(
      isRejected(card.refund(id, 301, "r3").getResult(), RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_EQ(card.stateOf(id), TransactionState::PARTIALLY_REFUNDED);
}

TEST(CardProcessor, RejectsOtherCurrenciesAndUnknownTransactions) {
  Harness card;
  auto id = card.authorized(1000, "a1");
  EXPECT_TRUE(
      isRejected(card.capture(id, 100, "c1", "USD").getResult(), RejectCode::CURRENCY_MISMATCH));
  auto never = nthId(id, 99);
  EXPECT_TRUE(
      isRejected(card.capture(never, 100, "c2").getResult(), RejectCode::UNKNOWN_TRANSACTION));
  EXPECT_TRUE(isRejected(card.sync(never).getResult(), RejectCode::UNKNOWN_TRANSACTION));
  EXPECT_TRUE(isRejected(card.sync("txn_0_1").getResult(), RejectCode::UNKNOWN_TRANSACTION));
}

TEST(CardProcessor, RejectsVoidAfterCapture) {
  Harness card;
  auto id = card.authorized(1000, "a1");
  EXPECT_TRUE(
      isApproved(card.capture(id, 100, "c1").getResult(), TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(isRejected(card.voidAuthorization(id, "v1").getResult(), RejectCode::INVALID_STATE));

  auto other = card.authorized(1000, "a2");
  EXPECT_TRUE(
      isApproved(card.voidAuthorization(other, "v2").getResult(), TransactionState::VOIDED));
  EXPECT_TRUE(isRejected(card.capture(other, 100, "c2").getResult(), RejectCode::INVALID_STATE));
}

TEST(CardProcessor, AuthorizationsExpireAfterSevenDaysByDefault) {
  Harness card;
  auto id = card.authorized(1000, "a1");
  card.host.advanceTime(7 * kj::DAYS);
  EXPECT_TRUE(isRejected(card.capture(id, 1000, "c1").getResult(), RejectCode::INVALID_STATE));
  EXPECT_EQ(card.stateOf(id), TransactionState::EXPIRED);
}

TEST(CardProcessor, AuthorizationWindowComesFromConfig) {
  Harness card("auth_window_s = 60");
  auto early = card.authorized(1000, "a1");
  auto late = card.authorized(1000, "a2");
  card.host.advanceTime(59 * kj::SECONDS);
  EXPECT_TRUE(isApproved(card.capture(early, 1000, "c1").getResult(), TransactionState::CAPTURED));
  card.host.advanceTime(1 * kj::SECONDS);
  EXPECT_TRUE(isRejected(card.capture(late, 1000, "c2").getResult(), RejectCode::INVALID_STATE));
  EXPECT_EQ(card.stateOf(late), TransactionState::EXPIRED);
  EXPECT_EQ(card.stateOf(early), TransactionState::CAPTURED);
}

TEST(CardProcessor, AmountsNearInt64MaxNeverWrap) {
  Harness card("max_amount_minor = 9223372036854775807");
  auto id = card.authorized(INT64_MAX_, "a1");
  EXPECT_TRUE(isApproved(card.capture(id, INT64_MAX_ - 1, "c1").getResult(),
                         TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(
      isRejected(card.capture(id, 2, "c2").getResult(), RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_TRUE(isApproved(card.capture(id, 1, "c3").getResult(), TransactionState::CAPTURED));
  EXPECT_TRUE(
      isApproved(card.refund(id, INT64_MAX_, "r1").getResult(), TransactionState::REFUNDED));
  EXPECT_TRUE(isRejected(card.refund(id, 1, "r2").getResult(), RejectCode::INVALID_STATE));
}

TEST(CardProcessor, CountsCallsInFlight) {
  Harness card;
  auto idle = card.host.liveObjects();
  auto promise = card.sendAuthorize("tok_slow", 1000, "a1");
  EXPECT_FALSE(promise.poll(card.host.waitScope()));
  EXPECT_EQ(card.host.liveObjects(), idle + 1);
  card.host.advanceTime(2 * kj::SECONDS);
  promise.wait(card.host.waitScope());
  EXPECT_EQ(card.host.liveObjects(), idle);
}

TEST(CardProcessor, RefusesBadConfig) {
  auto& plugin = *payhostPluginDescriptor();
  for (kj::StringPtr config :
       {"latency_ms = -1"_kj, "latency_ms = 3600001"_kj, "slow_ms = \"fast\""_kj,
        "auth_window_s = 0"_kj, "max_amount_minor = 0"_kj}) {
    EXPECT_ANY_THROW(payhost::testing::TestHost(plugin, config)) << config.cStr();
  }
}

TEST(CardProcessor, PurchaseAuthorizesAndCapturesInOneCall) {
  Harness card;
  auto response = card.purchase("tok_visa_approve", 1250, "order-1");
  ASSERT_TRUE(isApproved(response.getResult(), TransactionState::CAPTURED));
  auto id = kj::heapString(response.getResult().getApproved().getTransactionId());
  EXPECT_EQ(card.stateOf(id), TransactionState::CAPTURED);
  EXPECT_TRUE(
      isApproved(card.refund(id, 250, "r1").getResult(), TransactionState::PARTIALLY_REFUNDED));
  EXPECT_TRUE(isDeclined(card.purchase("tok_stolen", 1000, "order-2").getResult(),
                         schema::DeclineCode::STOLEN_CARD, schema::Advice::DO_NOT_RETRY));
  bool logged = false;
  for (auto& record : card.host.logs()) {
    if (record.event == "card.purchase") logged = true;
  }
  EXPECT_TRUE(logged);
}

// ---------------------------------------------------------------------------------------------
// Shards: each test host is one instance (one shard) on its own thread, as in payhostd.

using payhost::test::onAnotherThread;

TEST(CardProcessor, ShardsShareOneIssuer) {
  Harness first;
  auto id = first.authorized(1000, "a1");

  kj::String second;
  onAnotherThread([&]() {
    Harness other;
    // The authorization the first shard made is here: capture part of it, and sync.
    EXPECT_TRUE(
        isApproved(other.capture(id, 400, "c1").getResult(), TransactionState::PARTIALLY_CAPTURED));
    EXPECT_EQ(other.stateOf(id), TransactionState::PARTIALLY_CAPTURED);
    // The first shard's idempotency keys are known here too.
    auto replay = other.authorize("tok_visa_approve", 1000, "a1");
    EXPECT_EQ(replay.getResult().getApproved().getTransactionId(), id);
    EXPECT_TRUE(isRejected(other.authorize("tok_visa_approve", 999, "a1").getResult(),
                           RejectCode::IDEMPOTENCY_CONFLICT));
    // One counter for both: the next id is the issuer's second.
    second = other.authorized(500, "b1");
    // Each shard logs its own operations.
    EXPECT_EQ(other.host.logs().size(), 5u);
  });

  EXPECT_TRUE(isNthId(second, 2));
  EXPECT_EQ(idPrefix(second), idPrefix(id));
  EXPECT_EQ(SharedIssuer::liveForTest(), 1u);
  EXPECT_EQ(first.stateOf(id), TransactionState::PARTIALLY_CAPTURED);
  EXPECT_TRUE(isApproved(first.capture(id, 600, "c2").getResult(), TransactionState::CAPTURED));
  EXPECT_TRUE(
      isApproved(first.voidAuthorization(second, "v1").getResult(), TransactionState::VOIDED));
  EXPECT_EQ(first.host.logs().size(), 4u);
}

TEST(CardProcessor, AShardWithOtherSettingsHasItsOwnIssuer) {
  Harness first;
  auto id = first.authorized(1000, "a1");
  onAnotherThread([&]() {
    Harness other("max_amount_minor = 5000");
    auto response = other.sync(id);
    ASSERT_TRUE(isRejected(response.getResult(), RejectCode::UNKNOWN_TRANSACTION));
    EXPECT_EQ(response.getResult().getRejected().getMessage(), "no such transaction");
    EXPECT_EQ(SharedIssuer::liveForTest(), 2u);
  });
  // Latency is the shard's own: a shard with another latency shares the issuer.
  onAnotherThread([&]() {
    Harness other("latency_ms = 0\nslow_ms = 2000");
    EXPECT_EQ(other.stateOf(id), TransactionState::AUTHORIZED);
  });
}

TEST(CardProcessor, ANewInstanceAfterTheLastOneStartsEmpty) {
  kj::String id;
  {
    Harness first;
    id = first.authorized(1000, "a1");
  }
  EXPECT_EQ(SharedIssuer::liveForTest(), 0u);
  Harness later;
  auto response = later.sync(id);
  ASSERT_TRUE(isRejected(response.getResult(), RejectCode::UNKNOWN_TRANSACTION));
  EXPECT_EQ(response.getResult().getRejected().getMessage(), "no such transaction");
  auto fresh = later.authorized(1000, "a1");
  EXPECT_TRUE(isNthId(fresh, 1));
  EXPECT_NE(fresh, id);
}

// Shards authorizing and capturing at once through the plugin's services: unique ids, one
// effect per idempotency key, and captures that never add up to more than was authorized.
TEST(CardProcessor, ConcurrentShardsKeepIdsUniqueAndTotalsConsistent) {
  constexpr int SHARDS = 4;
  constexpr int PER_SHARD = 60;
  constexpr int64_t AMOUNT = 1000;
  constexpr int64_t CAPTURE = 300;  // Four exceed AMOUNT: exactly three fit.
  // Keeps the issuer alive between the phases (each phase's test hosts come and go).
  Harness anchor;

  std::mutex mutex;
  std::vector<std::string> ids;
  std::vector<std::string> sharedKeyIds;
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  std::barrier ready(SHARDS);
  threads.reserve(SHARDS);
  for (int t = 0; t < SHARDS; ++t) {
    threads.emplace_back([&, t]() {
      Harness shard;
      ready.arrive_and_wait();
      std::vector<std::string> mine;
      for (int i = 0; i < PER_SHARD; ++i) {
        mine.push_back(shard.authorized(AMOUNT, kj::str("a-", t, "-", i)).cStr());
        // The same key from every shard at once: one transaction.
        auto response = shard.authorize("tok_visa_approve", AMOUNT, kj::str("same-", i));
        if (!response.getResult().isApproved()) {
          wrong.fetch_add(1);
          continue;
        }
        std::lock_guard<std::mutex> lock(mutex);
        sharedKeyIds.push_back(response.getResult().getApproved().getTransactionId().cStr());
      }
      std::lock_guard<std::mutex> lock(mutex);
      ids.insert(ids.end(), mine.begin(), mine.end());
    });
  }
  for (auto& thread : threads)
    thread.join();
  threads.clear();
  ASSERT_EQ(wrong.load(), 0);
  ASSERT_EQ(ids.size(), size_t{SHARDS} * PER_SHARD);
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), ids.size());
  std::set<std::string> sameKey(sharedKeyIds.begin(), sharedKeyIds.end());
  EXPECT_EQ(sameKey.size(), size_t{PER_SHARD});
  for (auto& id : sameKey)
    EXPECT_EQ(std::count(ids.begin(), ids.end(), id), 0) << id;
  // The issuer made exactly one transaction per distinct key, numbered without gaps.
  EXPECT_TRUE(
      isNthId(anchor.authorized(AMOUNT, "last"), uint64_t{SHARDS} * PER_SHARD + PER_SHARD + 1));

  std::vector<std::atomic<int>> approved(ids.size());
  threads.reserve(SHARDS);
  for (int t = 0; t < SHARDS; ++t) {
    threads.emplace_back([&, t]() {
      Harness shard;
      ready.arrive_and_wait();
      for (size_t n = 0; n < ids.size(); ++n) {
        size_t i = (n * 7 + static_cast<size_t>(t) * 131) % ids.size();
        auto response = shard.capture(ids[i].c_str(), CAPTURE, kj::str("c-", t, "-", i));
        auto result = response.getResult();
        if (result.isApproved()) {
          approved[i].fetch_add(1);
        } else if (!result.isRejected() ||
                   result.getRejected().getCode() != RejectCode::AMOUNT_EXCEEDS_AVAILABLE) {
          wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& thread : threads)
    thread.join();
  EXPECT_EQ(wrong.load(), 0);
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_EQ(approved[i].load(), 3) << ids[i];
    EXPECT_EQ(anchor.stateOf(ids[i].c_str()), TransactionState::PARTIALLY_CAPTURED);
  }
  EXPECT_TRUE(isApproved(anchor.capture(ids[0].c_str(), AMOUNT - 3 * CAPTURE, "rest").getResult(),
                         TransactionState::CAPTURED));
}

}  // namespace
}  // namespace payhost::plugins::card
