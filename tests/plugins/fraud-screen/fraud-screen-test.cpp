// The fraud screen through the SDK's test host (real Cap'n Proto requests), its sliding windows
// driven by the test host's manual clock; the windows shared by instances (shards) on several
// threads; and the rules class directly for the sweep and the shared time.

#include <payhost/abi.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <kj/debug.h>

#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <string>
#include <thread>
#include <vector>

#include "../on-another-thread.h"
#include "rules.h"

namespace payhost::plugins::fraud {
namespace {

using schema::FraudDecision;

struct Attempt {
  kj::StringPtr token = "tok_card_a";
  kj::StringPtr merchant = "m_1";
  int64_t amount = 1000;
  kj::StringPtr currency = "EUR";
  kj::StringPtr cardCountry = "";
  kj::StringPtr ipCountry = "";
  kj::StringPtr merchantCountry = "";
};

class Harness {
public:
  explicit Harness(kj::StringPtr config)
      : host(*payhostPluginDescriptor(), config),
        fraud(host.service<schema::FraudScreen>("payments.fraud")) {}

  capnp::Response<schema::FraudScreen::ScreenResults> screen(const Attempt& attempt) {
    auto request = fraud.screenRequest();
    auto body = request.initRequest();
    body.setMerchantId(attempt.merchant);
    auto amount = body.initAmount();
    amount.setMinorUnits(attempt.amount);
    amount.setCurrency(attempt.currency);
    body.setCardToken(attempt.token);
    body.setCardCountry(attempt.cardCountry);
    body.setIpCountry(attempt.ipCountry);
    body.setMerchantCountry(attempt.merchantCountry);
    return request.send().wait(host.waitScope());
  }

  // "decision score rule,rule" for compact expectations.
  std::string verdict(const Attempt& attempt) {
    auto response = screen(attempt);
    auto verdict = response.getVerdict();
    std::string text;
    switch (verdict.getDecision()) {
      case FraudDecision::ALLOW:
        text = "allow";
        break;
      case FraudDecision::REVIEW:
        text = "review";
        break;
      case FraudDecision::DENY:
        text = "deny";
        break;
      case FraudDecision::REJECTED:
        return "rejected";
      default:
        return "unspecified";
    }
    text += " " + std::to_string(verdict.getScore());
    std::string names;
    for (auto name : verdict.getFiredRules()) {
      names += (names.empty() ? " " : ",") + std::string(name.cStr());
    }
    return text + names;
  }

  // Advances the manual clock to `seconds` after the start.
  void at(int64_t seconds) {
    auto target = seconds * kj::SECONDS;
    KJ_ASSERT(target >= elapsed);
    host.advanceTime(target - elapsed);
    elapsed = target;
  }

  payhost::testing::TestHost host;
  schema::FraudScreen::Client fraud;
  kj::Duration elapsed = 0 * kj::SECONDS;
};

constexpr kj::StringPtr CONFIG = R"(review_score = 300
deny_score = 700
[velocity]
card_limit = 3
card_window_s = 60
merchant_limit = 5
merchant_window_s = 10
[amount_limits]
EUR = 100000
JPY = 50000
)"_kj;

TEST(FraudScreen, ACleanRequestIsAllowedWithNoRules) {
  Harness fraud(CONFIG);
  auto response = fraud.screen({});
  auto verdict = response.getVerdict();
  EXPECT_EQ(verdict.getDecision(), FraudDecision::ALLOW);
  EXPECT_EQ(verdict.getScore(), 0u);
  EXPECT_EQ(verdict.getFiredRules().size(), 0u);
  EXPECT_EQ(verdict.getRules().size(), 0u);
  EXPECT_FALSE(verdict.hasRejection());
}

TEST(FraudScreen, CardVelocitySlidesWithTheClock) {
  Harness fraud(CONFIG);
  // Limit 3 per 60 s; each attempt at another merchant so only the card rule can fire.
  fraud.at(0);
  EXPECT_EQ(fraud.verdict({.merchant = "m_a"}), "allow 0");
  fraud.at(20);
  EXPECT_EQ(fraud.verdict({.merchant = "m_b"}), "allow 0");
  fraud.at(40);
  EXPECT_EQ(fraud.verdict({.merchant = "m_c"}), "allow 0");
  // Attempts at 0, 20, 40 and 59 s: four inside 60 s.
  fraud.at(59);
  EXPECT_EQ(fraud.verdict({.merchant = "m_d"}), "review 400 velocity.card");
  // Another card is not affected.
  EXPECT_EQ(fraud.verdict({.token = "tok_card_b", .merchant = "m_e"}), "allow 0");
  // At 60 s the attempt at 0 s has left the window: 20, 40, 59, 60 are still four.
  fraud.at(60);
  EXPECT_EQ(fraud.verdict({.merchant = "m_f"}), "review 400 velocity.card");
  // At 100 s, 20 and 40 have left: 59, 60, 100 are three.
  fraud.at(100);
  EXPECT_EQ(fraud.verdict({.merchant = "m_g"}), "allow 0");
}

TEST(FraudScreen, MerchantVelocityCountsEveryCard) {
  Harness fraud(CONFIG);
  for (auto token : {"tok_1", "tok_2", "tok_3", "tok_4", "tok_5"}) {
    EXPECT_EQ(fraud.verdict({.token = token}), "allow 0") << token;
  }
  auto response = fraud.screen({.token = "tok_6"});
  auto verdict = response.getVerdict();
  EXPECT_EQ(verdict.getDecision(), FraudDecision::REVIEW);
  ASSERT_EQ(verdict.getRules().size(), 1u);
  EXPECT_EQ(verdict.getRules()[0].getName(), "velocity.merchant");
  EXPECT_EQ(verdict.getRules()[0].getScore(), 300u);
  EXPECT_EQ(verdict.getRules()[0].getDetail(), "more than 5 attempts at this merchant in 10s");
  fraud.at(10);
  EXPECT_EQ(fraud.verdict({.token = "tok_7"}), "allow 0");
}

TEST(FraudScreen, AmountLimitsArePerCurrency) {
  Harness fraud(CONFIG);
  EXPECT_EQ(fraud.verdict({.token = "tok_a", .amount = 100000}), "allow 0");
  EXPECT_EQ(fraud.verdict({.token = "tok_b", .amount = 100001}), "review 500 amount.limit");
  EXPECT_EQ(fraud.verdict({.token = "tok_c", .amount = 50000, .currency = "JPY"}), "allow 0");
  EXPECT_EQ(fraud.verdict({.token = "tok_d", .amount = 50001, .currency = "JPY"}),
            "review 500 amount.limit");
  // No limit configured for USD.
  EXPECT_EQ(
      fraud.verdict(
          {.token = "tok_e", .merchant = "m_2", .amount = 1'000'000'000'000, .currency = "USD"}),
      "allow 0");
}

TEST(FraudScreen, CountryMismatchComparesOnlyKnownCountries) {
  Harness fraud(CONFIG);
  EXPECT_EQ(
      fraud.verdict(
          {.token = "tok_a", .cardCountry = "DE", .ipCountry = "DE", .merchantCountry = "DE"}),
      "allow 0");
  EXPECT_EQ(fraud.verdict({.token = "tok_b", .cardCountry = "DE"}), "allow 0");
  auto response = fraud.screen({.token = "tok_c", .cardCountry = "DE", .ipCountry = "US"});
  auto rules = response.getVerdict().getRules();
  ASSERT_EQ(rules.size(), 1u);
  EXPECT_EQ(rules[0].getName(), "country.mismatch");
  EXPECT_EQ(rules[0].getDetail(), "card DE vs ip US");
  // 200 is below the review threshold: the rule fired, the decision is still allow.
  EXPECT_EQ(response.getVerdict().getDecision(), FraudDecision::ALLOW);
  fraud.at(10);
  EXPECT_EQ(
      fraud.verdict(
          {.token = "tok_d", .cardCountry = "DE", .ipCountry = "US", .merchantCountry = "FR"}),
      "allow 200 country.mismatch");
  auto both = fraud.screen(
      {.token = "tok_e", .cardCountry = "DE", .ipCountry = "US", .merchantCountry = "FR"});
  EXPECT_EQ(both.getVerdict().getRules()[0].getDetail(),
            "card DE vs ip US, card DE vs merchant FR");
}

TEST(FraudScreen, ScoresAddUpToTheDecisionAndCapAt1000) {
  Harness fraud(CONFIG);
  // 500 + 200 = 700: deny.
  EXPECT_EQ(
      fraud.verdict({.token = "tok_a", .amount = 200000, .cardCountry = "DE", .ipCountry = "US"}),
      "deny 700 amount.limit,country.mismatch");
  // Card velocity too: 400 + 500 + 200 = 1100, capped at 1000.
  for (int i = 0; i < 3; ++i)
    fraud.screen({.token = "tok_b", .merchant = "m_x"});
  EXPECT_EQ(fraud.verdict({.token = "tok_b",
                           .merchant = "m_y",
                           .amount = 200000,
                           .cardCountry = "DE",
                           .ipCountry = "US"}),
            "deny 1000 velocity.card,amount.limit,country.mismatch");
}

TEST(FraudScreen, ScoresAndThresholdsComeFromConfig) {
  Harness fraud(R"(review_score = 100
deny_score = 150
[scores]
country_mismatch = 120
amount_limit = 30
[amount_limits]
EUR = 10
)");
  EXPECT_EQ(fraud.verdict({.token = "tok_a", .amount = 10, .cardCountry = "DE", .ipCountry = "US"}),
            "review 120 country.mismatch");
  EXPECT_EQ(fraud.verdict({.token = "tok_b", .amount = 11}), "allow 30 amount.limit");
  EXPECT_EQ(fraud.verdict({.token = "tok_c", .amount = 11, .cardCountry = "DE", .ipCountry = "US"}),
            "deny 150 amount.limit,country.mismatch");
}

TEST(FraudScreen, InvalidRequestsAreRejectedUncountedAndNeverEchoCardNumbers) {
  Harness fraud(CONFIG);
  Attempt bad[] = {
      {.token = "4111 1111 1111 1111"},
      {.token = "4111111111111111"},
      {.token = "tok_4111111111111111"},
      {.token = "card"},
      {.merchant = ""},
      {.merchant = "m 1"},
      {.amount = 0},
      {.amount = -5},
      {.currency = "EUX"},
      {.cardCountry = "de"},
      {.ipCountry = "USA"},
  };
  for (auto& attempt : bad) {
    auto response = fraud.screen(attempt);
    auto verdict = response.getVerdict();
    EXPECT_EQ(verdict.getDecision(), FraudDecision::REJECTED) << attempt.token.cStr();
    EXPECT_EQ(verdict.getRejection().getCode(), schema::RejectCode::INVALID_REQUEST);
    std::string message = verdict.getRejection().getMessage().cStr();
    EXPECT_EQ(message.find("4111"), std::string::npos) << message;
  }
  for (auto& record : fraud.host.logs()) {
    EXPECT_EQ(std::string(record.line.cStr()).find("4111"), std::string::npos)
        << record.line.cStr();
  }
  // None was counted: the merchant (limit 5) and the card (limit 3) are still clean.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(fraud.verdict({}), "allow 0");
  }
}

TEST(FraudScreen, LogsOneRecordPerScreen) {
  Harness fraud(CONFIG);
  fraud.screen({.token = "tok_a", .amount = 200000});
  ASSERT_EQ(fraud.host.logs().size(), 1u);
  EXPECT_EQ(fraud.host.logs()[0].line,
            "fraud.screen merchant=m_1 token=tok_a amount=200000 currency=EUR decision=review "
            "score=500 rules=amount.limit");
}

TEST(FraudScreen, RefusesBadConfig) {
  for (auto config : {"[velocity]\ncard_limit = 0", "[velocity]\ncard_window_s = 0",
                      "[velocity]\nmerchant_limit = -1", "review_score = 800\ndeny_score = 700",
                      "review_score = 0", "[scores]\namount_limit = 1001",
                      "[amount_limits]\nEUX = 100", "[amount_limits]\nEUR = \"100\"",
                      "[amount_limits]\nEUR = 0", "[velocity]\ncard_limit = \"5\""}) {
    EXPECT_ANY_THROW(payhost::testing::TestHost(*payhostPluginDescriptor(), config)) << config;
  }
}

// A card limit of two and a merchant limit of 100, both per minute.
Settings smallWindows(size_t sweepThreshold) {
  Settings settings;
  settings.card = {2, 60 * kj::SECONDS};
  settings.merchant = {100, 60 * kj::SECONDS};
  settings.sweepThreshold = sweepThreshold;
  return settings;
}

TEST(Screen, ForgetsCardsAndMerchantsThatLeftTheirWindows) {
  Screen screen(smallWindows(4));
  auto start = kj::UNIX_EPOCH + 1000 * kj::SECONDS;
  kj::String tokens[] = {kj::str("tok_a"), kj::str("tok_b"), kj::str("tok_c")};
  for (auto& token : tokens) {
    ScreenRequest request{.merchantId = "m_1", .amount = 1, .currency = "EUR", .cardToken = token};
    ASSERT_TRUE(screen.screen(request, start).is<Verdict>());
  }
  EXPECT_EQ(screen.trackedKeys(), 4u);  // three cards, one merchant
  // A minute later every key is stale; the next screen sweeps them and tracks only its own.
  ScreenRequest late{.merchantId = "m_2", .amount = 1, .currency = "EUR", .cardToken = "tok_d"};
  ASSERT_TRUE(screen.screen(late, start + 60 * kj::SECONDS).is<Verdict>());
  EXPECT_EQ(screen.trackedKeys(), 2u);
}

// ---------------------------------------------------------------------------------------------
// Shards: each test host is one instance (one shard) on its own thread, as in payhostd; they
// share the velocity windows.

using payhost::test::onAnotherThread;

// CONFIG where a card over its limit is denied (a merchant over its limit is reviewed).
kj::String sharedConfig() {
  return kj::str(CONFIG, "[scores]\nvelocity_card = 700\n");
}

TEST(SharedVelocity, ACardAtItsLimitOnOneShardIsDeniedOnAnother) {
  ASSERT_EQ(SharedVelocity::liveForTest(), 0u);
  Harness first(sharedConfig());
  EXPECT_EQ(first.verdict({.merchant = "m_a"}), "allow 0");
  EXPECT_EQ(first.verdict({.merchant = "m_b"}), "allow 0");
  onAnotherThread([&]() {
    Harness second(sharedConfig());
    EXPECT_EQ(SharedVelocity::liveForTest(), 1u);
    // The third attempt with this card, the first on this shard: at the limit, allowed.
    EXPECT_EQ(second.verdict({.merchant = "m_c"}), "allow 0");
    // The fourth: over the limit, though this shard has seen only two.
    EXPECT_EQ(second.verdict({.merchant = "m_d"}), "deny 700 velocity.card");
    // Another card is not affected.
    EXPECT_EQ(second.verdict({.token = "tok_card_b", .merchant = "m_e"}), "allow 0");
    // Each shard logs its own screens.
    EXPECT_EQ(second.host.logs().size(), 3u);
  });
  EXPECT_EQ(first.verdict({.merchant = "m_f"}), "deny 700 velocity.card");
  EXPECT_EQ(first.host.logs().size(), 3u);
}

TEST(SharedVelocity, AMerchantAtItsLimitOnOneShardIsReviewedOnAnother) {
  Harness first(sharedConfig());
  for (auto token : {"tok_1", "tok_2", "tok_3"}) {
    EXPECT_EQ(first.verdict({.token = token}), "allow 0");
  }
  onAnotherThread([&]() {
    Harness second(sharedConfig());
    EXPECT_EQ(second.verdict({.token = "tok_4"}), "allow 0");
    EXPECT_EQ(second.verdict({.token = "tok_5"}), "allow 0");
    EXPECT_EQ(second.verdict({.token = "tok_6"}), "review 300 velocity.merchant");
  });
  EXPECT_EQ(first.verdict({.token = "tok_7"}), "review 300 velocity.merchant");
}

TEST(SharedVelocity, AShardWithOtherWindowsHasItsOwn) {
  Harness first(sharedConfig());
  for (auto merchant : {"m_a", "m_b", "m_c"}) {
    EXPECT_EQ(first.verdict({.merchant = merchant}), "allow 0");
  }
  onAnotherThread([&]() {
    Harness other(kj::str("sweep_threshold = 1000\n", sharedConfig()));
    EXPECT_EQ(SharedVelocity::liveForTest(), 2u);
    EXPECT_EQ(other.verdict({.merchant = "m_d"}), "allow 0");
  });
  // Scores are a shard's own and do not select the windows: this one shares them.
  onAnotherThread([&]() {
    Harness other(kj::str(sharedConfig(), "country_mismatch = 100\n"));
    EXPECT_EQ(other.verdict({.merchant = "m_e"}), "deny 700 velocity.card");
  });
}

TEST(SharedVelocity, ANewInstanceAfterTheLastOneStartsEmpty) {
  {
    Harness first(sharedConfig());
    for (int i = 0; i < 4; ++i)
      first.verdict({.merchant = "m_a"});
    EXPECT_EQ(first.verdict({.merchant = "m_b"}), "deny 700 velocity.card");
  }
  EXPECT_EQ(SharedVelocity::liveForTest(), 0u);
  Harness later(sharedConfig());
  EXPECT_EQ(later.verdict({.merchant = "m_c"}), "allow 0");
}

// Shards screening the same card at the same merchant at once: every attempt is counted exactly
// once, so exactly the attempts beyond each limit fire.
TEST(SharedVelocity, ConcurrentShardsKeepExactCounts) {
  constexpr int SHARDS = 4;
  constexpr int PER_SHARD = 150;
  constexpr uint32_t CARD_LIMIT = 450;      // 150 of the 600 attempts are over it
  constexpr uint32_t MERCHANT_LIMIT = 520;  // 80 are over it
  auto config = kj::str("[velocity]\ncard_limit = ", CARD_LIMIT, "\ncard_window_s = 3600\n",
                        "merchant_limit = ", MERCHANT_LIMIT, "\nmerchant_window_s = 3600\n");
  std::atomic<int> cardFired{0};
  std::atomic<int> merchantFired{0};
  std::atomic<int> wrong{0};
  std::barrier ready(SHARDS);
  std::vector<std::thread> threads;
  threads.reserve(SHARDS);
  for (int t = 0; t < SHARDS; ++t) {
    threads.emplace_back([&]() {
      Harness shard(config);
      ready.arrive_and_wait();
      for (int i = 0; i < PER_SHARD; ++i) {
        auto response = shard.screen({});
        auto verdict = response.getVerdict();
        if (verdict.getDecision() == FraudDecision::REJECTED) wrong.fetch_add(1);
        for (auto name : verdict.getFiredRules()) {
          if (name == "velocity.card") {
            cardFired.fetch_add(1);
          } else if (name == "velocity.merchant") {
            merchantFired.fetch_add(1);
          } else {
            wrong.fetch_add(1);
          }
        }
      }
      // Every shard's host stays up until all have screened: one state throughout.
      ready.arrive_and_wait();
    });
  }
  for (auto& thread : threads)
    thread.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(cardFired.load(), SHARDS * PER_SHARD - static_cast<int>(CARD_LIMIT));
  EXPECT_EQ(merchantFired.load(), SHARDS * PER_SHARD - static_cast<int>(MERCHANT_LIMIT));
  EXPECT_EQ(SharedVelocity::liveForTest(), 0u);
}

// Two screens (shards) sharing windows with clocks apart: an attempt screened by the one behind
// is counted at the latest time either has seen, so the windows stay in time order and a sweep
// never drops a card that still has an attempt inside its window.
TEST(Screen, SharedTimeNeverRunsBackwards) {
  Screen ahead(smallWindows(2));
  Screen behind(smallWindows(2));
  ASSERT_EQ(&ahead.velocity(), &behind.velocity());
  ASSERT_EQ(SharedVelocity::liveForTest(), 1u);

  auto start = kj::UNIX_EPOCH + 1000 * kj::SECONDS;
  ScreenRequest card{.merchantId = "m_1", .amount = 1, .currency = "EUR", .cardToken = "tok_x"};
  ASSERT_TRUE(ahead.screen(card, start + 100 * kj::SECONDS).is<Verdict>());
  // Its clock reads 50 s earlier: counted at 100 s all the same.
  ASSERT_TRUE(behind.screen(card, start + 50 * kj::SECONDS).is<Verdict>());
  // At 110 s the sweep runs (two keys tracked): the card's last attempt is 10 s old, not 60.
  ScreenRequest other{.merchantId = "m_2", .amount = 1, .currency = "EUR", .cardToken = "tok_y"};
  ASSERT_TRUE(ahead.screen(other, start + 110 * kj::SECONDS).is<Verdict>());
  EXPECT_EQ(ahead.trackedKeys(), 4u);
  // So the third attempt inside 60 s is over the limit of two.
  auto third = ahead.screen(card, start + 111 * kj::SECONDS);
  ASSERT_TRUE(third.is<Verdict>());
  ASSERT_EQ(third.get<Verdict>().rules.size(), 1u);
  EXPECT_EQ(third.get<Verdict>().rules[0].name, "velocity.card");
}

}  // namespace
}  // namespace payhost::plugins::fraud
