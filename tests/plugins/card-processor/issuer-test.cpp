// The simulated issuer's rules, tested directly (no Cap'n Proto, no host).

#include "issuer.h"

#include <kj/debug.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string_view>

#include "print.h"

namespace payhost::plugins::card {
namespace {

constexpr int64_t INT64_MAX_ = std::numeric_limits<int64_t>::max();

bool contains(kj::StringPtr haystack, kj::StringPtr needle) {
  return std::string_view(haystack.cStr()).find(needle.cStr()) != std::string_view::npos;
}

// The test host's epoch (2026-01-01T00:00:00Z); any fixed instant would do.
kj::Date start() {
  return kj::UNIX_EPOCH + int64_t{1767225600} * kj::SECONDS;
}

AuthorizeRequest auth(kj::StringPtr token, int64_t amount, kj::StringPtr key,
                      kj::StringPtr currency = "EUR") {
  return AuthorizeRequest{.merchantId = "m_1",
                          .amount = amount,
                          .currency = currency,
                          .cardToken = token,
                          .idempotencyKey = key};
}

CaptureRequest capture(kj::StringPtr id, int64_t amount, kj::StringPtr key,
                       kj::StringPtr currency = "EUR") {
  return CaptureRequest{
      .transactionId = id, .amount = amount, .currency = currency, .idempotencyKey = key};
}

RefundRequest refund(kj::StringPtr id, int64_t amount, kj::StringPtr key,
                     kj::StringPtr currency = "EUR") {
  return RefundRequest{
      .transactionId = id, .amount = amount, .currency = currency, .idempotencyKey = key};
}

kj::String describe(const Result& result) {
  KJ_SWITCH_ONEOF(result) {
    KJ_CASE_ONEOF(approval, Approval) {
      return kj::str("approved ", approval.transactionId, " ", approval.state, " ",
                     approval.amount.minorUnits, " ", approval.amount.currency);
    }
    KJ_CASE_ONEOF(decline, Decline) {
      return kj::str("declined ", decline.code, " ", decline.advice, " ", decline.transactionId);
    }
    KJ_CASE_ONEOF(rejection, Rejection) {
      return kj::str("rejected ", rejection.code, ": ", rejection.message);
    }
    KJ_CASE_ONEOF(unknown, Unknown) {
      return kj::str("unknown ", unknown.transactionId);
    }
  }
  KJ_UNREACHABLE;
}

::testing::AssertionResult isApproved(const Outcome& outcome, TransactionState state) {
  KJ_IF_MAYBE (approval, outcome.result.tryGet<Approval>()) {
    if (approval->state == state) return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected approved " << nameOf(state).cStr() << ", got "
                                       << describe(outcome.result).cStr();
}

::testing::AssertionResult isDeclined(const Outcome& outcome, DeclineCode code, Advice advice) {
  KJ_IF_MAYBE (decline, outcome.result.tryGet<Decline>()) {
    if (decline->code == code && decline->advice == advice) return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "expected declined " << nameOf(code).cStr() << " " << nameOf(advice).cStr() << ", got "
         << describe(outcome.result).cStr();
}

::testing::AssertionResult isRejected(const Outcome& outcome, RejectCode code) {
  KJ_IF_MAYBE (rejection, outcome.result.tryGet<Rejection>()) {
    if (rejection->code == code) return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected rejected " << nameOf(code).cStr() << ", got "
                                       << describe(outcome.result).cStr();
}

// The transaction id the glue may log, or "(none)".
kj::StringPtr loggedIdOf(const Outcome& outcome) {
  KJ_IF_MAYBE (id, outcome.transactionId) {
    return *id;
  }
  return "(none)";
}

// Call only after checking the outcome: a wrong kind fails the test with an exception.
const Approval& approvalOf(const Outcome& outcome) {
  KJ_ASSERT(outcome.result.is<Approval>(), describe(outcome.result));
  return outcome.result.get<Approval>();
}

const Rejection& rejectionOf(const Outcome& outcome) {
  KJ_ASSERT(outcome.result.is<Rejection>(), describe(outcome.result));
  return outcome.result.get<Rejection>();
}

// Authorizes `amount` EUR on the approving test card and returns the transaction id.
kj::String authorized(Issuer& issuer, int64_t amount, kj::StringPtr key, kj::Date now = start()) {
  auto outcome = issuer.authorize(auth("tok_visa_approve", amount, key), now);
  KJ_ASSERT(outcome.result.is<Approval>(), describe(outcome.result));
  return kj::heapString(outcome.result.get<Approval>().transactionId);
}

TransactionState stateOf(Issuer& issuer, kj::StringPtr id, kj::Date now = start()) {
  auto outcome = issuer.sync(id, now);
  KJ_IF_MAYBE (approval, outcome.result.tryGet<Approval>()) {
    return approval->state;
  }
  if (outcome.result.is<Decline>()) return TransactionState::FAILED;
  KJ_FAIL_ASSERT("sync found no transaction", describe(outcome.result));
}

Issuer::Options bounded(kj::Duration retention, size_t maxTransactions = 100'000) {
  Issuer::Options options;
  options.retention = retention;
  options.maxTransactions = maxTransactions;
  return options;
}

// ---------------------------------------------------------------------------------------------
// Test cards and amounts

TEST(Issuer, ApprovesTheApprovingTestCard) {
  Issuer issuer({});
  auto outcome = issuer.authorize(auth("tok_visa_approve", 1000, "k1"), start());
  ASSERT_TRUE(isApproved(outcome, TransactionState::AUTHORIZED));
  auto& approval = approvalOf(outcome);
  EXPECT_EQ(approval.transactionId, "txn_0_1");
  EXPECT_EQ(approval.authCode, authCodeFor("k1"));
  EXPECT_EQ(approval.amount.minorUnits, 1000);
  EXPECT_EQ(approval.amount.currency, "EUR");
  EXPECT_EQ(loggedIdOf(outcome), "txn_0_1");
  EXPECT_EQ(outcome.delay, 0 * kj::SECONDS);
  EXPECT_FALSE(outcome.replayed);
}

TEST(Issuer, ApprovesAnyOtherVaultToken) {
  Issuer issuer({});
  EXPECT_TRUE(isApproved(issuer.authorize(auth("tok_mastercard", 1000, "k1"), start()),
                         TransactionState::AUTHORIZED));
  EXPECT_TRUE(isApproved(issuer.authorize(auth("tok_8f3A-x_9", 1000, "k2"), start()),
                         TransactionState::AUTHORIZED));
}

TEST(Issuer, DeclinesInsufficientFundsWithRetryLater) {
  Issuer issuer({});
  auto outcome = issuer.authorize(auth("tok_insufficient_funds", 1000, "k1"), start());
  EXPECT_TRUE(isDeclined(outcome, DeclineCode::INSUFFICIENT_FUNDS, Advice::RETRY_LATER));
  EXPECT_EQ(outcome.result.get<Decline>().transactionId, "txn_0_1");
}

TEST(Issuer, DeclinesStolenCardWithDoNotRetry) {
  Issuer issuer({});
  EXPECT_TRUE(isDeclined(issuer.authorize(auth("tok_stolen", 1000, "k1"), start()),
                         DeclineCode::STOLEN_CARD, Advice::DO_NOT_RETRY));
}

TEST(Issuer, DeclinesExpiredCard) {
  Issuer issuer({});
  EXPECT_TRUE(isDeclined(issuer.authorize(auth("tok_expired", 1000, "k1"), start()),
                         DeclineCode::EXPIRED_CARD, Advice::DO_NOT_RETRY));
}

TEST(Issuer, TimeoutIsUnknownButTheIssuerApproved) {
  Issuer issuer({});
  auto outcome = issuer.authorize(auth("tok_timeout", 1000, "k1"), start());
  ASSERT_TRUE(outcome.result.is<Unknown>()) << describe(outcome.result).cStr();
  auto id = kj::heapString(outcome.result.get<Unknown>().transactionId);
  EXPECT_EQ(id, "txn_0_1");

  auto synced = issuer.sync(id, start());
  ASSERT_TRUE(isApproved(synced, TransactionState::AUTHORIZED));
  EXPECT_EQ(approvalOf(synced).amount.minorUnits, 1000);
  EXPECT_EQ(approvalOf(synced).authCode, authCodeFor("k1"));
  // The authorization is real: it can be captured.
  EXPECT_TRUE(
      isApproved(issuer.capture(capture(id, 1000, "c1"), start()), TransactionState::CAPTURED));
}

TEST(Issuer, SlowCardApprovesAfterTheConfiguredDelay) {
  Issuer issuer({.slowDelay = 1500 * kj::MILLISECONDS});
  auto outcome = issuer.authorize(auth("tok_slow", 1000, "k1"), start());
  EXPECT_TRUE(isApproved(outcome, TransactionState::AUTHORIZED));
  EXPECT_EQ(outcome.delay, 1500 * kj::MILLISECONDS);
  // A retry is answered from memory, at once.
  auto replay = issuer.authorize(auth("tok_slow", 1000, "k1"), start());
  EXPECT_TRUE(replay.replayed);
  EXPECT_EQ(replay.delay, 0 * kj::SECONDS);
}

TEST(Issuer, SlowCardDefaultsToTwoSeconds) {
  Issuer issuer({});
  EXPECT_EQ(issuer.authorize(auth("tok_slow", 1000, "k1"), start()).delay, 2 * kj::SECONDS);
}

TEST(Issuer, AmountEndingIn51DeclinesDoNotHonor) {
  Issuer issuer({});
  for (int64_t amount : {51, 151, 100051}) {
    EXPECT_TRUE(
        isDeclined(issuer.authorize(auth("tok_visa_approve", amount, kj::str(amount)), start()),
                   DeclineCode::DO_NOT_HONOR, Advice::CONTACT_ISSUER))
        << amount;
  }
  for (int64_t amount : {50, 52, 510, 5100}) {
    EXPECT_TRUE(
        isApproved(issuer.authorize(auth("tok_visa_approve", amount, kj::str(amount)), start()),
                   TransactionState::AUTHORIZED))
        << amount;
  }
}

TEST(Issuer, AmountAboveTheLimitDeclines) {
  Issuer issuer({});
  EXPECT_TRUE(isApproved(issuer.authorize(auth("tok_visa_approve", 100'000'000, "k1"), start()),
                         TransactionState::AUTHORIZED));
  EXPECT_TRUE(isDeclined(issuer.authorize(auth("tok_visa_approve", 100'000'100, "k2"), start()),
                         DeclineCode::AMOUNT_LIMIT_EXCEEDED, Advice::DO_NOT_RETRY));

  Issuer small({.maxAmountMinor = 500});
  EXPECT_TRUE(isDeclined(small.authorize(auth("tok_slow", 501, "k1"), start()),
                         DeclineCode::AMOUNT_LIMIT_EXCEEDED, Advice::DO_NOT_RETRY));
}

TEST(Issuer, CardBehaviourWinsOverAmountRules) {
  Issuer issuer({});
  EXPECT_TRUE(isDeclined(issuer.authorize(auth("tok_stolen", 151, "k1"), start()),
                         DeclineCode::STOLEN_CARD, Advice::DO_NOT_RETRY));
  EXPECT_TRUE(issuer.authorize(auth("tok_timeout", 151, "k2"), start()).result.is<Unknown>());
}

TEST(Issuer, AuthCodeIsSixCharactersDerivedFromTheIdempotencyKey) {
  auto code = authCodeFor("order-42");
  ASSERT_EQ(code.size(), 6u);
  for (char c : code)
    EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')) << c;
  EXPECT_EQ(code, authCodeFor("order-42"));
  EXPECT_NE(code, authCodeFor("order-43"));

  Issuer a({}), b({});
  EXPECT_EQ(approvalOf(a.authorize(auth("tok_visa_approve", 100, "order-42"), start())).authCode,
            approvalOf(b.authorize(auth("tok_visa_approve", 900, "order-42"), start())).authCode);
}

TEST(Issuer, TransactionIdsCarryTheEpochAndNeverRepeat) {
  Issuer issuer({}, 0x8bad5eed0042);
  EXPECT_EQ(issuer.idEpoch(), 0x8bad5eed0042u);
  EXPECT_EQ(authorized(issuer, 100, "k1"), "txn_8bad5eed0042_1");
  auto declined = issuer.authorize(auth("tok_stolen", 100, "k2"), start());
  EXPECT_EQ(declined.result.get<Decline>().transactionId, "txn_8bad5eed0042_2");
  EXPECT_EQ(authorized(issuer, 100, "k3"), "txn_8bad5eed0042_3");
}

TEST(Issuer, IdsOfAnotherEpochWereNeverIssued) {
  Issuer issuer(bounded(1 * kj::HOURS), 0xa1);
  auto id = authorized(issuer, 100, "k1");
  ASSERT_EQ(id, "txn_a1_1");
  // Another issuer's transaction 1 (another process, an earlier plugin version) is not ours.
  for (kj::StringPtr other : {"txn_a2_1", "txn_0_1", "txn_A1_1", "txn_a10_1"}) {
    auto unknown = issuer.sync(other, start());
    ASSERT_TRUE(isRejected(unknown, RejectCode::UNKNOWN_TRANSACTION)) << other.cStr();
    EXPECT_EQ(rejectionOf(unknown).message, "no such transaction") << other.cStr();
  }
  // Our own, once forgotten (an hour after its seven-day window), says so.
  auto forgotten = issuer.sync(id, start() + 8 * kj::DAYS);
  ASSERT_TRUE(isRejected(forgotten, RejectCode::UNKNOWN_TRANSACTION));
  EXPECT_TRUE(contains(rejectionOf(forgotten).message, "forgotten"));
}

// ---------------------------------------------------------------------------------------------
// Validation

TEST(Issuer, RejectsMissingOrMalformedMerchant) {
  Issuer issuer({});
  for (kj::StringPtr merchant : {""_kj, "acme corp"_kj, "m\n1"_kj}) {
    auto request = auth("tok_visa_approve", 100, "k1");
    request.merchantId = merchant;
    EXPECT_TRUE(isRejected(issuer.authorize(request, start()), RejectCode::INVALID_REQUEST));
  }
  auto tooLong = kj::heapString(256);
  for (auto& c : tooLong)
    c = 'm';
  auto request = auth("tok_visa_approve", 100, "k1");
  request.merchantId = tooLong;
  EXPECT_TRUE(isRejected(issuer.authorize(request, start()), RejectCode::INVALID_REQUEST));
}

TEST(Issuer, RejectsNonPositiveAmounts) {
  Issuer issuer({});
  for (int64_t amount : {int64_t{0}, int64_t{-1}, std::numeric_limits<int64_t>::min()}) {
    EXPECT_TRUE(isRejected(issuer.authorize(auth("tok_visa_approve", amount, "k1"), start()),
                           RejectCode::INVALID_REQUEST))
        << amount;
  }
}

TEST(Issuer, RejectsCurrenciesThatAreNotThreeUpperCaseLetters) {
  Issuer issuer({});
  for (kj::StringPtr currency : {""_kj, "eur"_kj, "EU"_kj, "EURO"_kj, "E1R"_kj, "Eur"_kj}) {
    EXPECT_TRUE(isRejected(issuer.authorize(auth("tok_visa_approve", 100, "k1", currency), start()),
                           RejectCode::INVALID_REQUEST))
        << currency.cStr();
  }
  EXPECT_TRUE(isApproved(issuer.authorize(auth("tok_visa_approve", 100, "k1", "JPY"), start()),
                         TransactionState::AUTHORIZED));
}

TEST(Issuer, RejectsEmptyOrOversizedIdempotencyKeys) {
  Issuer issuer({});
  EXPECT_TRUE(isRejected(issuer.authorize(auth("tok_visa_approve", 100, ""), start()),
                         RejectCode::INVALID_REQUEST));
  auto key = kj::heapString(256);
  for (auto& c : key)
    c = 'k';
  EXPECT_TRUE(isRejected(issuer.authorize(auth("tok_visa_approve", 100, key), start()),
                         RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isApproved(issuer.authorize(auth("tok_visa_approve", 100, key.slice(1)), start()),
                         TransactionState::AUTHORIZED));
}

TEST(Issuer, RejectsTokensThatAreNotVaultTokens) {
  Issuer issuer({});
  for (kj::StringPtr token :
       {""_kj, "tok_"_kj, "card_123"_kj, "TOK_visa"_kj, "tok_a b"_kj, "tok_visa\n"_kj, "visa"_kj}) {
    auto outcome = issuer.authorize(auth(token, 100, "k1"), start());
    EXPECT_TRUE(isRejected(outcome, RejectCode::INVALID_REQUEST)) << token.cStr();
  }
}

TEST(Issuer, RejectsCardNumbersWithoutEchoingThem) {
  Issuer issuer({});
  for (kj::StringPtr pan :
       {"4111111111111111"_kj, "4111 1111 1111 1111"_kj, "4111-1111-1111-1111"_kj, "42"_kj}) {
    auto outcome = issuer.authorize(auth(pan, 100, "k1"), start());
    ASSERT_TRUE(isRejected(outcome, RejectCode::INVALID_REQUEST)) << pan.cStr();
    auto& message = rejectionOf(outcome).message;
    EXPECT_TRUE(contains(message, "card number")) << message.cStr();
    for (char c : message)
      EXPECT_FALSE(c >= '0' && c <= '9') << message.cStr();
  }
}

TEST(Issuer, RejectsOversizedMetadata) {
  Issuer issuer({});
  MetadataEntry entries[MAX_METADATA_ENTRIES + 1];
  for (auto& entry : entries)
    entry = MetadataEntry{"key", "value"};
  auto request = auth("tok_visa_approve", 100, "k1");
  request.metadata = kj::arrayPtr(entries, MAX_METADATA_ENTRIES + 1);
  EXPECT_TRUE(isRejected(issuer.authorize(request, start()), RejectCode::INVALID_REQUEST));

  MetadataEntry emptyKey[] = {{"", "value"}};
  request.metadata = emptyKey;
  EXPECT_TRUE(isRejected(issuer.authorize(request, start()), RejectCode::INVALID_REQUEST));

  request.metadata = kj::arrayPtr(entries, MAX_METADATA_ENTRIES);
  EXPECT_TRUE(isApproved(issuer.authorize(request, start()), TransactionState::AUTHORIZED));
}

TEST(Issuer, InvalidRequestsAreNotRemembered) {
  // A corrected request may reuse the key of one that failed validation.
  Issuer issuer({});
  EXPECT_TRUE(isRejected(issuer.authorize(auth("tok_visa_approve", 0, "k1"), start()),
                         RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isApproved(issuer.authorize(auth("tok_visa_approve", 100, "k1"), start()),
                         TransactionState::AUTHORIZED));
}

TEST(Issuer, ValidatesCaptureVoidRefundAndSync) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  for (auto& request : {capture("", 100, "c"), capture(id, 0, "c"), capture(id, -5, "c"),
                        capture(id, 100, "c", "eur"), capture(id, 100, "")}) {
    EXPECT_TRUE(isRejected(issuer.capture(request, start()), RejectCode::INVALID_REQUEST));
    RefundRequest asRefund{request.transactionId, request.amount, request.currency,
                           request.idempotencyKey};
    EXPECT_TRUE(isRejected(issuer.refund(asRefund, start()), RejectCode::INVALID_REQUEST));
  }
  EXPECT_TRUE(
      isRejected(issuer.voidAuthorization({.transactionId = "", .idempotencyKey = "v"}, start()),
                 RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(
      isRejected(issuer.voidAuthorization({.transactionId = id, .idempotencyKey = ""}, start()),
                 RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(issuer.sync("", start()), RejectCode::INVALID_REQUEST));
  EXPECT_EQ(stateOf(issuer, id), TransactionState::AUTHORIZED);
}

// ---------------------------------------------------------------------------------------------
// Idempotency

TEST(Issuer, ReplaysTheFirstAuthorizationForTheSameKeyAndParameters) {
  Issuer issuer({});
  auto first = issuer.authorize(auth("tok_visa_approve", 1000, "k1"), start());
  auto second = issuer.authorize(auth("tok_visa_approve", 1000, "k1"), start() + kj::HOURS);
  ASSERT_TRUE(isApproved(second, TransactionState::AUTHORIZED));
  EXPECT_TRUE(second.replayed);
  EXPECT_EQ(approvalOf(second).transactionId, approvalOf(first).transactionId);
  EXPECT_EQ(approvalOf(second).authCode, approvalOf(first).authCode);
  // No second transaction was made.
  EXPECT_EQ(authorized(issuer, 1000, "k2"), "txn_0_2");
}

TEST(Issuer, ReplaysDeclinesAndUnknownOutcomesToo) {
  Issuer issuer({});
  auto declined = issuer.authorize(auth("tok_insufficient_funds", 1000, "k1"), start());
  auto again = issuer.authorize(auth("tok_insufficient_funds", 1000, "k1"), start());
  EXPECT_TRUE(isDeclined(again, DeclineCode::INSUFFICIENT_FUNDS, Advice::RETRY_LATER));
  EXPECT_TRUE(again.replayed);
  EXPECT_EQ(again.result.get<Decline>().transactionId,
            declined.result.get<Decline>().transactionId);

  EXPECT_TRUE(issuer.authorize(auth("tok_timeout", 1000, "k2"), start()).result.is<Unknown>());
  auto unknown = issuer.authorize(auth("tok_timeout", 1000, "k2"), start());
  ASSERT_TRUE(unknown.result.is<Unknown>());
  EXPECT_EQ(unknown.result.get<Unknown>().transactionId, "txn_0_2");
}

TEST(Issuer, RejectsAReusedKeyWithDifferentParametersWithoutEffect) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "k1");
  auto differentAmount = issuer.authorize(auth("tok_visa_approve", 2000, "k1"), start());
  EXPECT_TRUE(isRejected(differentAmount, RejectCode::IDEMPOTENCY_CONFLICT));
  EXPECT_FALSE(differentAmount.replayed);
  EXPECT_TRUE(isRejected(issuer.authorize(auth("tok_stolen", 1000, "k1"), start()),
                         RejectCode::IDEMPOTENCY_CONFLICT));
  EXPECT_TRUE(isRejected(issuer.authorize(auth("tok_visa_approve", 1000, "k1", "USD"), start()),
                         RejectCode::IDEMPOTENCY_CONFLICT));
  auto otherMerchant = auth("tok_visa_approve", 1000, "k1");
  otherMerchant.merchantId = "m_2";
  EXPECT_TRUE(
      isRejected(issuer.authorize(otherMerchant, start()), RejectCode::IDEMPOTENCY_CONFLICT));

  // The first authorization is untouched and no transaction was made.
  auto synced = issuer.sync(id, start());
  ASSERT_TRUE(isApproved(synced, TransactionState::AUTHORIZED));
  EXPECT_EQ(approvalOf(synced).amount.minorUnits, 1000);
  EXPECT_EQ(authorized(issuer, 1000, "k2"), "txn_0_2");
}

TEST(Issuer, MetadataIsPartOfTheParameters) {
  Issuer issuer({});
  MetadataEntry first[] = {{"order", "42"}};
  MetadataEntry second[] = {{"order", "43"}};
  MetadataEntry shifted[] = {{"orde", "r42"}};
  auto request = auth("tok_visa_approve", 100, "k1");
  request.metadata = first;
  EXPECT_TRUE(isApproved(issuer.authorize(request, start()), TransactionState::AUTHORIZED));
  EXPECT_TRUE(issuer.authorize(request, start()).replayed);
  request.metadata = second;
  EXPECT_TRUE(isRejected(issuer.authorize(request, start()), RejectCode::IDEMPOTENCY_CONFLICT));
  request.metadata = shifted;
  EXPECT_TRUE(isRejected(issuer.authorize(request, start()), RejectCode::IDEMPOTENCY_CONFLICT));
}

TEST(Issuer, KeysAreScopedPerOperation) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "same");
  EXPECT_TRUE(isApproved(issuer.capture(capture(id, 400, "same"), start()),
                         TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(isApproved(issuer.refund(refund(id, 100, "same"), start()),
                         TransactionState::PARTIALLY_REFUNDED));
}

TEST(Issuer, ReplaysCapturesAndRejectsConflictingOnes) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(isApproved(issuer.capture(capture(id, 400, "c1"), start()),
                         TransactionState::PARTIALLY_CAPTURED));
  // A retry must not capture twice.
  auto replay = issuer.capture(capture(id, 400, "c1"), start());
  EXPECT_TRUE(isApproved(replay, TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(replay.replayed);
  EXPECT_TRUE(isRejected(issuer.capture(capture(id, 500, "c1"), start()),
                         RejectCode::IDEMPOTENCY_CONFLICT));
  // 600 remain: a full capture of them proves neither call above took anything.
  EXPECT_TRUE(
      isApproved(issuer.capture(capture(id, 600, "c2"), start()), TransactionState::CAPTURED));
}

TEST(Issuer, ReplaysRejectionsEvenWhenTheStateHasChanged) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, 100, "r1"), start()), RejectCode::INVALID_STATE));
  EXPECT_TRUE(
      isApproved(issuer.capture(capture(id, 1000, "c1"), start()), TransactionState::CAPTURED));
  // The key answered once; the same request gets the same answer, a new key a new one.
  auto replay = issuer.refund(refund(id, 100, "r1"), start());
  EXPECT_TRUE(isRejected(replay, RejectCode::INVALID_STATE));
  EXPECT_TRUE(replay.replayed);
  EXPECT_TRUE(isApproved(issuer.refund(refund(id, 100, "r2"), start()),
                         TransactionState::PARTIALLY_REFUNDED));
}

TEST(Issuer, ReplaysVoids) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(isApproved(issuer.voidAuthorization({id, "v1"}, start()), TransactionState::VOIDED));
  auto replay = issuer.voidAuthorization({id, "v1"}, start());
  EXPECT_TRUE(isApproved(replay, TransactionState::VOIDED));
  EXPECT_TRUE(replay.replayed);
  EXPECT_TRUE(isRejected(issuer.voidAuthorization({id, "v2"}, start()), RejectCode::INVALID_STATE));
  auto other = authorized(issuer, 1000, "a2");
  EXPECT_TRUE(isRejected(issuer.voidAuthorization({other, "v1"}, start()),
                         RejectCode::IDEMPOTENCY_CONFLICT));
  EXPECT_EQ(stateOf(issuer, other), TransactionState::AUTHORIZED);
}

// ---------------------------------------------------------------------------------------------
// Capture

TEST(Issuer, CapturesInFull) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  auto outcome = issuer.capture(capture(id, 1000, "c1"), start());
  ASSERT_TRUE(isApproved(outcome, TransactionState::CAPTURED));
  EXPECT_EQ(approvalOf(outcome).transactionId, id);
  EXPECT_EQ(approvalOf(outcome).authCode, authCodeFor("a1"));
  EXPECT_EQ(approvalOf(outcome).amount.minorUnits, 1000);
  EXPECT_EQ(stateOf(issuer, id), TransactionState::CAPTURED);
}

TEST(Issuer, CapturesInPartsUpToTheAuthorizedAmount) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  auto first = issuer.capture(capture(id, 300, "c1"), start());
  EXPECT_TRUE(isApproved(first, TransactionState::PARTIALLY_CAPTURED));
  EXPECT_EQ(approvalOf(first).amount.minorUnits, 300);
  EXPECT_TRUE(isApproved(issuer.capture(capture(id, 300, "c2"), start()),
                         TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(
      isApproved(issuer.capture(capture(id, 400, "c3"), start()), TransactionState::CAPTURED));
  EXPECT_TRUE(isRejected(issuer.capture(capture(id, 1, "c4"), start()), RejectCode::INVALID_STATE));
}

TEST(Issuer, RejectsCapturesAboveTheAuthorizedAmount) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(isRejected(issuer.capture(capture(id, 1001, "c1"), start()),
                         RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_EQ(stateOf(issuer, id), TransactionState::AUTHORIZED);
  EXPECT_TRUE(isApproved(issuer.capture(capture(id, 700, "c2"), start()),
                         TransactionState::PARTIALLY_CAPTURED));
  auto over = issuer.capture(capture(id, 301, "c3"), start());
  EXPECT_TRUE(isRejected(over, RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_EQ(loggedIdOf(over), id);
  EXPECT_EQ(stateOf(issuer, id), TransactionState::PARTIALLY_CAPTURED);
}

TEST(Issuer, RejectsCapturesInAnotherCurrency) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(isRejected(issuer.capture(capture(id, 100, "c1", "USD"), start()),
                         RejectCode::CURRENCY_MISMATCH));
  EXPECT_EQ(stateOf(issuer, id), TransactionState::AUTHORIZED);
}

TEST(Issuer, RejectsOperationsOnUnknownTransactions) {
  Issuer issuer({});
  auto outcome = issuer.capture(capture("txn_0_99", 100, "c1"), start());
  EXPECT_TRUE(isRejected(outcome, RejectCode::UNKNOWN_TRANSACTION));
  EXPECT_EQ(loggedIdOf(outcome), "(none)");
  EXPECT_TRUE(isRejected(issuer.voidAuthorization({"txn_0_99", "v1"}, start()),
                         RejectCode::UNKNOWN_TRANSACTION));
  EXPECT_TRUE(isRejected(issuer.refund(refund("txn_0_99", 100, "r1"), start()),
                         RejectCode::UNKNOWN_TRANSACTION));
  EXPECT_TRUE(isRejected(issuer.sync("txn_0_99", start()), RejectCode::UNKNOWN_TRANSACTION));
}

TEST(Issuer, RejectsCaptureOfADeclinedAuthorization) {
  Issuer issuer({});
  auto declined = issuer.authorize(auth("tok_stolen", 1000, "a1"), start());
  auto id = kj::heapString(declined.result.get<Decline>().transactionId);
  EXPECT_TRUE(
      isRejected(issuer.capture(capture(id, 1000, "c1"), start()), RejectCode::INVALID_STATE));
  EXPECT_TRUE(isRejected(issuer.voidAuthorization({id, "v1"}, start()), RejectCode::INVALID_STATE));
  // Sync answers with the decline.
  EXPECT_TRUE(isDeclined(issuer.sync(id, start()), DeclineCode::STOLEN_CARD, Advice::DO_NOT_RETRY));
}

// ---------------------------------------------------------------------------------------------
// Void

TEST(Issuer, VoidsAnUncapturedAuthorization) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  auto outcome = issuer.voidAuthorization({id, "v1"}, start());
  ASSERT_TRUE(isApproved(outcome, TransactionState::VOIDED));
  EXPECT_EQ(approvalOf(outcome).amount.minorUnits, 1000);
  EXPECT_EQ(stateOf(issuer, id), TransactionState::VOIDED);
  EXPECT_TRUE(
      isRejected(issuer.capture(capture(id, 100, "c1"), start()), RejectCode::INVALID_STATE));
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, 100, "r1"), start()), RejectCode::INVALID_STATE));
}

TEST(Issuer, RejectsVoidAfterAnyCapture) {
  Issuer issuer({});
  auto full = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(
      isApproved(issuer.capture(capture(full, 1000, "c1"), start()), TransactionState::CAPTURED));
  EXPECT_TRUE(
      isRejected(issuer.voidAuthorization({full, "v1"}, start()), RejectCode::INVALID_STATE));
  EXPECT_EQ(stateOf(issuer, full), TransactionState::CAPTURED);

  auto partial = authorized(issuer, 1000, "a2");
  EXPECT_TRUE(isApproved(issuer.capture(capture(partial, 1, "c2"), start()),
                         TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(
      isRejected(issuer.voidAuthorization({partial, "v2"}, start()), RejectCode::INVALID_STATE));
}

// ---------------------------------------------------------------------------------------------
// Refund

TEST(Issuer, RefundsInPartsUpToTheCapturedAmount) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(
      isApproved(issuer.capture(capture(id, 1000, "c1"), start()), TransactionState::CAPTURED));
  auto first = issuer.refund(refund(id, 250, "r1"), start());
  EXPECT_TRUE(isApproved(first, TransactionState::PARTIALLY_REFUNDED));
  EXPECT_EQ(approvalOf(first).amount.minorUnits, 250);
  EXPECT_TRUE(isApproved(issuer.refund(refund(id, 250, "r2"), start()),
                         TransactionState::PARTIALLY_REFUNDED));
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, 501, "r3"), start()),
                         RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_TRUE(
      isApproved(issuer.refund(refund(id, 500, "r4"), start()), TransactionState::REFUNDED));
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, 1, "r5"), start()), RejectCode::INVALID_STATE));
  EXPECT_EQ(stateOf(issuer, id), TransactionState::REFUNDED);
}

TEST(Issuer, RefundsAreBoundedByWhatWasCapturedNotAuthorized) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(isApproved(issuer.capture(capture(id, 600, "c1"), start()),
                         TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, 700, "r1"), start()),
                         RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_TRUE(
      isApproved(issuer.refund(refund(id, 600, "r2"), start()), TransactionState::REFUNDED));
}

TEST(Issuer, RejectsRefundBeforeCapture) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, 100, "r1"), start()), RejectCode::INVALID_STATE));
}

TEST(Issuer, RejectsRefundsInAnotherCurrency) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(
      isApproved(issuer.capture(capture(id, 1000, "c1"), start()), TransactionState::CAPTURED));
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, 100, "r1", "GBP"), start()),
                         RejectCode::CURRENCY_MISMATCH));
  EXPECT_EQ(stateOf(issuer, id), TransactionState::CAPTURED);
}

TEST(Issuer, RejectsCapturingTheRemainderAfterARefund) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(isApproved(issuer.capture(capture(id, 500, "c1"), start()),
                         TransactionState::PARTIALLY_CAPTURED));
  EXPECT_TRUE(isApproved(issuer.refund(refund(id, 100, "r1"), start()),
                         TransactionState::PARTIALLY_REFUNDED));
  EXPECT_TRUE(
      isRejected(issuer.capture(capture(id, 500, "c2"), start()), RejectCode::INVALID_STATE));
}

// ---------------------------------------------------------------------------------------------
// Expiry

TEST(Issuer, AuthorizationsExpireAfterTheWindow) {
  Issuer issuer({.authWindow = kj::HOURS});
  auto id = authorized(issuer, 1000, "a1");
  auto late = start() + kj::HOURS;
  EXPECT_EQ(stateOf(issuer, id, late - kj::SECONDS), TransactionState::AUTHORIZED);
  EXPECT_TRUE(isRejected(issuer.capture(capture(id, 1000, "c1"), late), RejectCode::INVALID_STATE));
  EXPECT_EQ(stateOf(issuer, id, late), TransactionState::EXPIRED);
  EXPECT_TRUE(isRejected(issuer.voidAuthorization({id, "v1"}, late), RejectCode::INVALID_STATE));
}

TEST(Issuer, CapturesJustInsideTheWindow) {
  Issuer issuer({.authWindow = kj::HOURS, .retention = 60 * kj::DAYS});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(isApproved(issuer.capture(capture(id, 1000, "c1"), start() + kj::HOURS - kj::SECONDS),
                         TransactionState::CAPTURED));
  // Captured money stays refundable after the window (while the issuer keeps the transaction).
  EXPECT_TRUE(isApproved(issuer.refund(refund(id, 1000, "r1"), start() + 30 * kj::DAYS),
                         TransactionState::REFUNDED));
}

TEST(Issuer, DefaultWindowIsSevenDays) {
  Issuer issuer({});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_EQ(stateOf(issuer, id, start() + 7 * kj::DAYS - kj::SECONDS),
            TransactionState::AUTHORIZED);
  EXPECT_EQ(stateOf(issuer, id, start() + 7 * kj::DAYS), TransactionState::EXPIRED);
}

TEST(Issuer, ThePartlyCapturedRemainderExpiresButStaysRefundable) {
  Issuer issuer({.authWindow = kj::HOURS});
  auto id = authorized(issuer, 1000, "a1");
  EXPECT_TRUE(isApproved(issuer.capture(capture(id, 400, "c1"), start()),
                         TransactionState::PARTIALLY_CAPTURED));
  auto late = start() + 2 * kj::HOURS;
  EXPECT_TRUE(isRejected(issuer.capture(capture(id, 600, "c2"), late), RejectCode::INVALID_STATE));
  EXPECT_EQ(stateOf(issuer, id, late), TransactionState::PARTIALLY_CAPTURED);
  EXPECT_TRUE(isApproved(issuer.refund(refund(id, 400, "r1"), late), TransactionState::REFUNDED));
}

// ---------------------------------------------------------------------------------------------
// Overflow

TEST(Issuer, AmountsNearInt64MaxNeverWrap) {
  Issuer issuer({.maxAmountMinor = INT64_MAX_});
  // INT64_MAX ends in ...07, so no amount rule declines it.
  auto id = authorized(issuer, INT64_MAX_, "a1");
  EXPECT_TRUE(isApproved(issuer.capture(capture(id, INT64_MAX_ - 1, "c1"), start()),
                         TransactionState::PARTIALLY_CAPTURED));
  // captured + 2 would wrap to a negative total that a naive check lets through.
  EXPECT_TRUE(isRejected(issuer.capture(capture(id, 2, "c2"), start()),
                         RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_TRUE(isRejected(issuer.capture(capture(id, INT64_MAX_, "c3"), start()),
                         RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_TRUE(
      isApproved(issuer.capture(capture(id, 1, "c4"), start()), TransactionState::CAPTURED));

  EXPECT_TRUE(isApproved(issuer.refund(refund(id, INT64_MAX_ - 1, "r1"), start()),
                         TransactionState::PARTIALLY_REFUNDED));
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, INT64_MAX_, "r2"), start()),
                         RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, 2, "r3"), start()),
                         RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_TRUE(isApproved(issuer.refund(refund(id, 1, "r4"), start()), TransactionState::REFUNDED));
}

TEST(Issuer, DefaultLimitDeclinesInt64Max) {
  Issuer issuer({});
  EXPECT_TRUE(isDeclined(issuer.authorize(auth("tok_visa_approve", INT64_MAX_, "a1"), start()),
                         DeclineCode::AMOUNT_LIMIT_EXCEEDED, Advice::DO_NOT_RETRY));
}

// ---------------------------------------------------------------------------------------------
// Helpers for logging and options

TEST(Issuer, TokensAreLoggedOnlyWhenTheyCannotHoldACardNumber) {
  EXPECT_EQ(tokenForLog("tok_visa_approve"), "tok_visa_approve");
  EXPECT_EQ(tokenForLog("tok_12345678901"), "tok_12345678901");  // 11 digits: not a PAN
  EXPECT_EQ(tokenForLog("4111111111111111"), "[redacted]");
  EXPECT_EQ(tokenForLog("tok_4111111111111111"), "[redacted]");
  EXPECT_EQ(tokenForLog("tok_411111111111"), "[redacted]");
  EXPECT_EQ(tokenForLog("tok_a b"), "[redacted]");
  EXPECT_EQ(tokenForLog(""), "[redacted]");
}

TEST(Issuer, RecognisesWhatLooksLikeACardNumber) {
  EXPECT_TRUE(looksLikeCardNumber("4111111111111111"));
  EXPECT_TRUE(looksLikeCardNumber("4111 1111 1111 1111"));
  EXPECT_TRUE(looksLikeCardNumber("4111-1111-1111-1111"));
  EXPECT_FALSE(looksLikeCardNumber("tok_4111"));
  EXPECT_FALSE(looksLikeCardNumber(""));
  EXPECT_FALSE(looksLikeCardNumber(" - "));
}

TEST(Issuer, MerchantsAreLoggedOnlyWhenValid) {
  EXPECT_EQ(merchantForLog("m_1"), "m_1");
  EXPECT_EQ(merchantForLog("m_1 outcome=approved"), "[invalid]");
  EXPECT_EQ(merchantForLog(""), "[invalid]");
}

TEST(Issuer, RefusesNonsensicalOptions) {
  EXPECT_ANY_THROW(Issuer({.maxAmountMinor = 0}));
  EXPECT_ANY_THROW(Issuer({.authWindow = 0 * kj::SECONDS}));
  EXPECT_ANY_THROW(Issuer({.slowDelay = -1 * kj::SECONDS}));
}

// ---------------------------------------------------------------------------------------------
// Purchase: authorize and capture in one step

TEST(Issuer, PurchaseCapturesTheWholeAmountAtOnce) {
  Issuer issuer({});
  auto outcome = issuer.purchase(auth("tok_visa_approve", 1000, "p1"), start());
  ASSERT_TRUE(isApproved(outcome, TransactionState::CAPTURED));
  auto id = kj::heapString(approvalOf(outcome).transactionId);
  EXPECT_EQ(approvalOf(outcome).amount.minorUnits, 1000);
  EXPECT_EQ(stateOf(issuer, id), TransactionState::CAPTURED);
  // Nothing is left to capture or void; all of it can be refunded.
  EXPECT_TRUE(isRejected(issuer.capture(capture(id, 1, "c1"), start()), RejectCode::INVALID_STATE));
  EXPECT_TRUE(isRejected(issuer.voidAuthorization({id, "v1"}, start()), RejectCode::INVALID_STATE));
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, 1001, "r1"), start()),
                         RejectCode::AMOUNT_EXCEEDS_AVAILABLE));
  EXPECT_TRUE(
      isApproved(issuer.refund(refund(id, 1000, "r2"), start()), TransactionState::REFUNDED));
}

TEST(Issuer, PurchaseUsesTheSameTestCardsAndAmountRules) {
  Issuer issuer({.maxAmountMinor = 5000});
  EXPECT_TRUE(isDeclined(issuer.purchase(auth("tok_insufficient_funds", 1000, "p1"), start()),
                         DeclineCode::INSUFFICIENT_FUNDS, Advice::RETRY_LATER));
  EXPECT_TRUE(isDeclined(issuer.purchase(auth("tok_stolen", 1000, "p2"), start()),
                         DeclineCode::STOLEN_CARD, Advice::DO_NOT_RETRY));
  EXPECT_TRUE(isDeclined(issuer.purchase(auth("tok_visa_approve", 5001, "p3"), start()),
                         DeclineCode::AMOUNT_LIMIT_EXCEEDED, Advice::DO_NOT_RETRY));
  EXPECT_TRUE(isDeclined(issuer.purchase(auth("tok_visa_approve", 151, "p4"), start()),
                         DeclineCode::DO_NOT_HONOR, Advice::CONTACT_ISSUER));
  EXPECT_TRUE(isRejected(issuer.purchase(auth("tok_visa_approve", 0, "p5"), start()),
                         RejectCode::INVALID_REQUEST));
  auto slow = issuer.purchase(auth("tok_slow", 1000, "p6"), start());
  EXPECT_TRUE(isApproved(slow, TransactionState::CAPTURED));
  EXPECT_EQ(slow.delay, 2 * kj::SECONDS);
}

TEST(Issuer, PurchaseTimeoutIsUnknownAndSyncShowsItCaptured) {
  Issuer issuer({});
  auto outcome = issuer.purchase(auth("tok_timeout", 700, "p1"), start());
  ASSERT_TRUE(outcome.result.is<Unknown>()) << describe(outcome.result).cStr();
  auto id = kj::heapString(outcome.result.get<Unknown>().transactionId);
  EXPECT_EQ(stateOf(issuer, id), TransactionState::CAPTURED);
  EXPECT_TRUE(
      isApproved(issuer.refund(refund(id, 700, "r1"), start()), TransactionState::REFUNDED));
}

TEST(Issuer, PurchaseKeysAreSeparateFromAuthorizeKeysAndReplay) {
  Issuer issuer({});
  auto authorizedOutcome = issuer.authorize(auth("tok_visa_approve", 1000, "k1"), start());
  ASSERT_TRUE(isApproved(authorizedOutcome, TransactionState::AUTHORIZED));
  // The same key under purchase is a different operation: a new transaction, captured.
  auto purchased = issuer.purchase(auth("tok_visa_approve", 1000, "k1"), start());
  ASSERT_TRUE(isApproved(purchased, TransactionState::CAPTURED));
  EXPECT_NE(approvalOf(purchased).transactionId, approvalOf(authorizedOutcome).transactionId);

  auto replay = issuer.purchase(auth("tok_visa_approve", 1000, "k1"), start());
  EXPECT_TRUE(replay.replayed);
  EXPECT_EQ(approvalOf(replay).transactionId, approvalOf(purchased).transactionId);
  EXPECT_TRUE(isRejected(issuer.purchase(auth("tok_visa_approve", 999, "k1"), start()),
                         RejectCode::IDEMPOTENCY_CONFLICT));
  EXPECT_EQ(issuer.sync("txn_0_3", start()).result.is<Rejection>(), true);
}

// ---------------------------------------------------------------------------------------------
// Bounds: what the issuer forgets, and how it says so

TEST(Issuer, ForgetsASettledTransactionAfterTheRetentionAndSaysSo) {
  Issuer issuer(bounded(1 * kj::HOURS));
  auto purchase = issuer.purchase(auth("tok_visa_approve", 500, "p1"), start());
  auto id = kj::heapString(approvalOf(purchase).transactionId);
  // A refund is an operation: the hour counts from it.
  ASSERT_TRUE(isApproved(issuer.refund(refund(id, 100, "r1"), start() + 30 * kj::MINUTES),
                         TransactionState::PARTIALLY_REFUNDED));
  EXPECT_EQ(stateOf(issuer, id, start() + 89 * kj::MINUTES), TransactionState::PARTIALLY_REFUNDED);
  auto later = issuer.sync(id, start() + 91 * kj::MINUTES);
  ASSERT_TRUE(isRejected(later, RejectCode::UNKNOWN_TRANSACTION));
  EXPECT_TRUE(contains(rejectionOf(later).message, "forgotten"))
      << rejectionOf(later).message.cStr();
  EXPECT_EQ(loggedIdOf(later), id);
  EXPECT_TRUE(isRejected(issuer.refund(refund(id, 100, "r2"), start() + 92 * kj::MINUTES),
                         RejectCode::UNKNOWN_TRANSACTION));
  EXPECT_EQ(issuer.transactionsHeldForTest(), 0u);
  // An id it never issued is unknown, not forgotten.
  for (kj::StringPtr other : {"txn_0_2", "txn_1_1", "txn_0_01", "txn_0_", "card_0_1"}) {
    auto unknown = issuer.sync(other, start() + 92 * kj::MINUTES);
    ASSERT_TRUE(isRejected(unknown, RejectCode::UNKNOWN_TRANSACTION)) << other.cStr();
    EXPECT_EQ(rejectionOf(unknown).message, "no such transaction") << other.cStr();
    EXPECT_EQ(loggedIdOf(unknown), "(none)");
  }
}

TEST(Issuer, KeepsAnAuthorizationWhileItCanStillBeCaptured) {
  Issuer::Options options = bounded(1 * kj::HOURS);
  options.authWindow = 1 * kj::DAYS;
  Issuer issuer(options);
  auto id = authorized(issuer, 1000, "a1");
  // Long past the retention, inside the window: still capturable.
  ASSERT_TRUE(isApproved(issuer.capture(capture(id, 400, "c1"), start() + 20 * kj::HOURS),
                         TransactionState::PARTIALLY_CAPTURED));
  EXPECT_EQ(stateOf(issuer, id, start() + 23 * kj::HOURS), TransactionState::PARTIALLY_CAPTURED);
  // An hour after the window has closed, it goes.
  EXPECT_EQ(stateOf(issuer, id, start() + 24 * kj::HOURS + 59 * kj::MINUTES),
            TransactionState::PARTIALLY_CAPTURED);
  auto gone = issuer.sync(id, start() + 25 * kj::HOURS);
  EXPECT_TRUE(isRejected(gone, RejectCode::UNKNOWN_TRANSACTION)) << describe(gone.result).cStr();
}

TEST(Issuer, ForgetsIdempotencyRecordsAfterTheRetention) {
  Issuer issuer(bounded(1 * kj::HOURS));
  auto first = issuer.authorize(auth("tok_visa_approve", 700, "k"), start());
  auto replay = issuer.authorize(auth("tok_visa_approve", 700, "k"), start() + 59 * kj::MINUTES);
  EXPECT_TRUE(replay.replayed);
  EXPECT_EQ(approvalOf(replay).transactionId, approvalOf(first).transactionId);
  EXPECT_EQ(issuer.recordsHeldForTest(), 1u);
  // After the retention the key is free again: a new authorization.
  auto fresh = issuer.authorize(auth("tok_visa_approve", 700, "k"), start() + 61 * kj::MINUTES);
  EXPECT_FALSE(fresh.replayed);
  EXPECT_NE(approvalOf(fresh).transactionId, approvalOf(first).transactionId);
  EXPECT_EQ(issuer.recordsHeldForTest(), 1u);
}

TEST(Issuer, HoldsAtMostMaxTransactionsAndForgetsTheOldestFirst) {
  constexpr size_t MAX = 50;
  Issuer issuer(bounded(24 * kj::HOURS, MAX));
  kj::Vector<kj::String> ids;
  for (int i = 0; i < 1000; ++i) {
    auto outcome = issuer.authorize(auth("tok_visa_approve", 100, kj::str("k", i)), start());
    ids.add(kj::heapString(approvalOf(outcome).transactionId));
    ASSERT_LE(issuer.transactionsHeldForTest(), MAX);
    ASSERT_LE(issuer.recordsHeldForTest(), MAX * 5);
  }
  EXPECT_EQ(issuer.transactionsHeldForTest(), MAX);
  EXPECT_EQ(stateOf(issuer, ids.back()), TransactionState::AUTHORIZED);
  auto oldest = issuer.sync(ids[0], start());
  ASSERT_TRUE(isRejected(oldest, RejectCode::UNKNOWN_TRANSACTION));
  EXPECT_TRUE(contains(rejectionOf(oldest).message, "forgotten"));
}

TEST(Issuer, MemoryStaysBoundedUnderSteadyTraffic) {
  // Six hours of purchases, one a second: with a one-hour retention, an hour's worth is held.
  Issuer issuer(bounded(1 * kj::HOURS));
  for (int i = 0; i < 6 * 3600; ++i) {
    auto now = start() + i * kj::SECONDS;
    auto outcome = issuer.purchase(auth("tok_visa_approve", 100, kj::str("k", i)), now);
    ASSERT_TRUE(outcome.result.is<Approval>());
  }
  EXPECT_LE(issuer.transactionsHeldForTest(), 3601u);
  EXPECT_GE(issuer.transactionsHeldForTest(), 3599u);
  EXPECT_LE(issuer.recordsHeldForTest(), 3601u);
}

}  // namespace
}  // namespace payhost::plugins::card
