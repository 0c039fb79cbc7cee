// The fraud screen's real .so in a real payhostd with two shards, called over TCP through the
// Gateway: one card token's attempts arrive on connections on both shards, and its velocity limit
// holds across them (the shards share one set of windows). payhostd hands each accepted
// connection to the next shard in turn; the shard of each screen is read from the daemon's log,
// so the test checks that the attempts really crossed shards rather than trusting that order.

#include <payhost/payments.capnp.h>

#include <gtest/gtest.h>

#include "daemon-process.h"

namespace payhost::test {
namespace {

using schema::FraudDecision;
using schema::FraudScreen;

// A card over its limit of three in ten minutes is denied; nothing else fires.
kj::String fraudPlugin() {
  return pluginTable(kj::str(PAYHOST_PLUGIN_BUILD_DIR, "/fraud-screen/fraud-screen.so"), "",
                     "[plugin.config.velocity]\ncard_limit = 3\ncard_window_s = 600\n"
                     "[plugin.config.scores]\nvelocity_card = 700");
}

class FraudShards : public EndToEnd {
protected:
  // DaemonProcess's destructor may throw (it fails the test instead); a test's may not.
  ~FraudShards() noexcept override {}

  // A client of payments.fraud on a new connection (a new shard, in turn).
  using Client = ServiceConnection<FraudScreen>;

  kj::Own<Client> connect() { return kj::heap<Client>(io, daemon.tcpAddress(), "payments.fraud"); }

  // Screens one attempt of `token` at `merchant` and returns its decision and the shard that
  // logged it (the screens are made one after another, so the nth record is the nth screen's).
  struct Screened {
    FraudDecision decision;
    kj::String shard;
  };
  Screened screen(Client& client, kj::StringPtr token, kj::StringPtr merchant) {
    auto request = client.service.screenRequest();
    auto body = request.initRequest();
    body.setMerchantId(merchant);
    body.initAmount().setMinorUnits(1000);
    body.getAmount().setCurrency("EUR");
    body.setCardToken(token);
    auto response = await(request.send());
    auto decision = response.getVerdict().getDecision();
    auto lines = daemon.waitForLogCount("event=fraud.screen ", ++screens);
    auto line = lines[screens - 1];
    KJ_ASSERT(contains(line, kj::str(" token=", token, " ")), line, token);
    return {decision, KJ_ASSERT_NONNULL(logField(line, "shard"), line)};
  }

  size_t screens = 0;
  DaemonProcess daemon{DaemonOptions{.shards = 2, .plugins = fraudPlugin()}};
};

TEST_F(FraudShards, ACardsLimitHoldsAcrossShards) {
  constexpr kj::StringPtr CARD = "tok_e2e_card"_kj;
  auto first = connect();
  auto one = screen(*first, CARD, "m_1");
  EXPECT_EQ(one.decision, FraudDecision::ALLOW);

  // A connection on the other shard: the next one accepted, unless something else connected in
  // between; each candidate screens another card to say where it runs.
  kj::Own<Client> other;
  for (int attempt = 0; attempt < 4 && other.get() == nullptr; ++attempt) {
    auto candidate = connect();
    auto probe = screen(*candidate, kj::str("tok_probe_", attempt), "m_probe");
    EXPECT_EQ(probe.decision, FraudDecision::ALLOW);
    if (probe.shard != one.shard) other = kj::mv(candidate);
  }
  ASSERT_TRUE(other.get() != nullptr) << "no connection landed on the other shard";

  // Attempts two and three, on the other shard: at the limit, allowed.
  for (auto merchant : {"m_2", "m_3"}) {
    auto there = screen(*other, CARD, merchant);
    EXPECT_EQ(there.decision, FraudDecision::ALLOW) << merchant;
    EXPECT_NE(there.shard, one.shard);
  }
  // The fourth, back on the first shard (which has seen only one): over the limit.
  auto fourth = screen(*first, CARD, "m_4");
  EXPECT_EQ(fourth.decision, FraudDecision::DENY);
  EXPECT_EQ(fourth.shard, one.shard);
  // And the fifth on the other shard (which has seen two).
  auto fifth = screen(*other, CARD, "m_5");
  EXPECT_EQ(fifth.decision, FraudDecision::DENY);
  EXPECT_NE(fifth.shard, one.shard);
  // Another card is not affected, on either shard.
  EXPECT_EQ(screen(*first, "tok_e2e_other", "m_6").decision, FraudDecision::ALLOW);
}

}  // namespace
}  // namespace payhost::test
