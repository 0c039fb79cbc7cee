// The card-processor's real .so in a real payhostd with two shards, called over TCP through the
// Gateway: an authorization made on one shard is synced, captured, refunded and voided through
// connections on the other shard. payhostd hands each accepted connection to the next shard in
// turn; the shard of each call is read from the daemon's log, so the test checks that it really
// crossed shards rather than trusting that order.

#include <payhost/payments.capnp.h>

#include <kj/vector.h>

#include <gtest/gtest.h>

#include "daemon-process.h"

namespace payhost::test {
namespace {

using schema::CardProcessor;
using schema::PaymentResult;
using schema::TransactionState;

kj::String cardPlugin() {
  return pluginTable(kj::str(PAYHOST_PLUGIN_BUILD_DIR, "/card-processor/card-processor.so"), "",
                     "latency_ms = 0");
}

class CardShards : public EndToEnd {
protected:
  // DaemonProcess's destructor may throw (it fails the test instead); a test's may not.
  ~CardShards() noexcept override {}

  // A client of payments.card on a new connection (a new shard, in turn).
  using Client = ServiceConnection<CardProcessor>;

  kj::Own<Client> connect() { return kj::heap<Client>(io, daemon.tcpAddress(), "payments.card"); }

  capnp::Response<CardProcessor::AuthorizeResults> authorize(Client& client, int64_t amount,
                                                             kj::StringPtr key) {
    auto request = client.service.authorizeRequest();
    auto body = request.initRequest();
    body.setMerchantId("m_1");
    body.initAmount().setMinorUnits(amount);
    body.getAmount().setCurrency("EUR");
    body.setCardToken("tok_visa_approve");
    body.setIdempotencyKey(key);
    return await(request.send());
  }

  capnp::Response<CardProcessor::CaptureResults> capture(Client& client, kj::StringPtr id,
                                                         int64_t amount, kj::StringPtr key) {
    auto request = client.service.captureRequest();
    auto body = request.initRequest();
    body.setTransactionId(id);
    body.initAmount().setMinorUnits(amount);
    body.getAmount().setCurrency("EUR");
    body.setIdempotencyKey(key);
    return await(request.send());
  }

  capnp::Response<CardProcessor::RefundResults> refund(Client& client, kj::StringPtr id,
                                                       int64_t amount, kj::StringPtr key) {
    auto request = client.service.refundRequest();
    auto body = request.initRequest();
    body.setTransactionId(id);
    body.initAmount().setMinorUnits(amount);
    body.getAmount().setCurrency("EUR");
    body.setIdempotencyKey(key);
    return await(request.send());
  }

  capnp::Response<CardProcessor::VoidAuthorizationResults> voidAuthorization(Client& client,
                                                                             kj::StringPtr id,
                                                                             kj::StringPtr key) {
    auto request = client.service.voidAuthorizationRequest();
    auto body = request.initRequest();
    body.setTransactionId(id);
    body.setIdempotencyKey(key);
    return await(request.send());
  }

  capnp::Response<CardProcessor::SyncResults> sync(Client& client, kj::StringPtr id) {
    auto request = client.service.syncRequest();
    request.setTransactionId(id);
    return await(request.send());
  }

  // The shard that logged the `nth` record (from 1) of `event`, which must be about transaction
  // `id`. The calls are made one after another, so the nth record is the nth call's.
  kj::String shardOf(kj::StringPtr event, size_t nth, kj::StringPtr id) {
    auto lines = daemon.waitForLogCount(kj::str("event=", event, " "), nth);
    auto line = lines[nth - 1];
    KJ_ASSERT(contains(line, kj::str(" transaction=", id, " ")), line, id);
    return KJ_ASSERT_NONNULL(logField(line, "shard"), line);
  }

  DaemonProcess daemon{DaemonOptions{.shards = 2, .plugins = cardPlugin()}};
};

::testing::AssertionResult isApproved(PaymentResult::Reader result, TransactionState state) {
  if (result.isApproved() && result.getApproved().getState() == state) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected approved with state " << static_cast<int>(state)
                                       << ", got " << result.toString().flatten().cStr();
}

TEST_F(CardShards, ATransactionAuthorizedOnOneShardIsCapturedOnAnother) {
  auto first = connect();
  auto authorized = authorize(*first, 1000, "a1");
  ASSERT_TRUE(isApproved(authorized.getResult(), TransactionState::AUTHORIZED));
  auto id = kj::heapString(authorized.getResult().getApproved().getTransactionId());
  auto authorizedOn = shardOf("card.authorize", 1, id);

  // A connection on the other shard: the next one accepted, unless something else connected
  // in between; each candidate's sync says where it runs (and already needs the shared issuer).
  kj::Own<Client> other;
  size_t syncs = 0;
  for (int attempt = 0; attempt < 4 && other.get() == nullptr; ++attempt) {
    auto candidate = connect();
    ASSERT_TRUE(isApproved(sync(*candidate, id).getResult(), TransactionState::AUTHORIZED));
    if (shardOf("card.sync", ++syncs, id) != authorizedOn) other = kj::mv(candidate);
  }
  ASSERT_TRUE(other.get() != nullptr) << "no connection landed on the other shard";

  ASSERT_TRUE(
      isApproved(capture(*other, id, 600, "c1").getResult(), TransactionState::PARTIALLY_CAPTURED));
  EXPECT_NE(shardOf("card.capture", 1, id), authorizedOn);
  // Back on the first shard: it sees the capture, and refunds part of it.
  EXPECT_TRUE(isApproved(sync(*first, id).getResult(), TransactionState::PARTIALLY_CAPTURED));
  EXPECT_EQ(shardOf("card.sync", ++syncs, id), authorizedOn);
  EXPECT_TRUE(
      isApproved(refund(*first, id, 200, "r1").getResult(), TransactionState::PARTIALLY_REFUNDED));
  EXPECT_EQ(shardOf("card.refund", 1, id), authorizedOn);
  // Idempotency keys are shared too: the capture's retry on the first shard replays it.
  auto retried = capture(*first, id, 600, "c1");
  ASSERT_TRUE(isApproved(retried.getResult(), TransactionState::PARTIALLY_CAPTURED));
  EXPECT_EQ(shardOf("card.capture", 2, id), authorizedOn);
  EXPECT_TRUE(daemon.logged("replayed=true"));

  // One counter for the whole process: the other shard's authorization is the second.
  auto second = authorize(*other, 500, "a2");
  ASSERT_TRUE(isApproved(second.getResult(), TransactionState::AUTHORIZED));
  auto secondId = kj::heapString(second.getResult().getApproved().getTransactionId());
  auto prefix = id.slice(0, KJ_ASSERT_NONNULL(id.findLast('_')) + 1);
  EXPECT_EQ(secondId, kj::str(prefix, "2"));
  EXPECT_TRUE(
      isApproved(voidAuthorization(*first, secondId, "v1").getResult(), TransactionState::VOIDED));
  EXPECT_NE(shardOf("card.void", 1, secondId), shardOf("card.authorize", 2, secondId));
}

}  // namespace
}  // namespace payhost::test
