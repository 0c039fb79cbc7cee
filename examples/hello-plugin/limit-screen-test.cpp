// Unit tests for limit-screen with the SDK's in-process test host: no daemon, no sockets.
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <gtest/gtest.h>

namespace {

using payhost::schema::FraudDecision;
using payhost::schema::FraudScreen;

payhost::schema::FraudVerdict::Reader screen(
    FraudScreen::Client& client, kj::WaitScope& ws, int64_t amount, kj::StringPtr cardCountry,
    kj::StringPtr ipCountry, kj::Own<capnp::Response<FraudScreen::ScreenResults>>& keep) {
  auto request = client.screenRequest();
  auto body = request.initRequest();
  body.setMerchantId("m-1");
  body.initAmount().setMinorUnits(amount);
  body.getAmount().setCurrency("EUR");
  body.setCardToken("tok_test");
  body.setCardCountry(cardCountry);
  body.setIpCountry(ipCountry);
  keep = kj::heap(request.send().wait(ws));
  return keep->getVerdict();
}

TEST(LimitScreen, AllowsSmallDomesticPayment) {
  payhost::testing::TestHost host(*payhostPluginDescriptor(), "max_amount = 10000");
  auto client = host.service<FraudScreen>("payments.screen");
  kj::Own<capnp::Response<FraudScreen::ScreenResults>> keep;
  auto verdict = screen(client, host.waitScope(), 500, "DE", "DE", keep);
  EXPECT_EQ(verdict.getDecision(), FraudDecision::ALLOW);
  EXPECT_EQ(verdict.getScore(), 0u);
}

TEST(LimitScreen, DeniesAmountAboveLimit) {
  payhost::testing::TestHost host(*payhostPluginDescriptor(), "max_amount = 10000");
  auto client = host.service<FraudScreen>("payments.screen");
  kj::Own<capnp::Response<FraudScreen::ScreenResults>> keep;
  auto verdict = screen(client, host.waitScope(), 10001, "DE", "DE", keep);
  EXPECT_EQ(verdict.getDecision(), FraudDecision::DENY);
  ASSERT_EQ(verdict.getFiredRules().size(), 1u);
  EXPECT_EQ(verdict.getFiredRules()[0], "amount-limit");
}

TEST(LimitScreen, ReviewsCountryMismatch) {
  payhost::testing::TestHost host(*payhostPluginDescriptor(), "review_score = 700");
  auto client = host.service<FraudScreen>("payments.screen");
  kj::Own<capnp::Response<FraudScreen::ScreenResults>> keep;
  auto verdict = screen(client, host.waitScope(), 500, "DE", "BR", keep);
  EXPECT_EQ(verdict.getDecision(), FraudDecision::REVIEW);
  EXPECT_EQ(verdict.getScore(), 700u);
  ASSERT_EQ(host.logs().size(), 1u);
  EXPECT_EQ(host.logs()[0].event, "screen.verdict");
}

TEST(LimitScreen, RefusesNonPositiveLimit) {
  EXPECT_ANY_THROW(payhost::testing::TestHost(*payhostPluginDescriptor(), "max_amount = 0"));
}

}  // namespace
