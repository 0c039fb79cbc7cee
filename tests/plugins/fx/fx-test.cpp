// The FX plugin through the SDK's test host: quotes from the configured table, conversions at a
// quote's rate, expiry on the test host's manual clock, and config refusals.

#include <payhost/abi.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <kj/debug.h>

#include <gtest/gtest.h>

#include <limits>

namespace payhost::plugins::fx {
namespace {

using schema::FxResult;
using schema::RejectCode;

constexpr kj::StringPtr CONFIG = R"(quote_ttl_s = 30
[rates]
EUR_USD = "1.0842"
EUR_GBP = "1.5"
USD_JPY = "150.25"
JPY_USD = "0.006655"
USD_KWD = "0.30705"
KWD_USD = "3.2568"
KWD_JPY = "489.5"
JPY_KRW = "9.5"
)"_kj;

class Harness {
public:
  explicit Harness(kj::StringPtr config = CONFIG)
      : host(*payhostPluginDescriptor(), config), fx(host.service<schema::Fx>("payments.fx")) {}

  capnp::Response<schema::Fx::QuoteResults> quote(int64_t amount, kj::StringPtr from,
                                                  kj::StringPtr to) {
    auto request = fx.quoteRequest();
    auto source = request.initSource();
    source.setMinorUnits(amount);
    source.setCurrency(from);
    request.setTargetCurrency(to);
    return request.send().wait(host.waitScope());
  }

  // The quoted target amount, or fails the test.
  int64_t quoted(int64_t amount, kj::StringPtr from, kj::StringPtr to) {
    auto response = quote(amount, from, to);
    auto result = response.getResult();
    KJ_ASSERT(result.isQuote(), result.toString().flatten());
    return result.getQuote().getTarget().getMinorUnits();
  }

  kj::String quoteId(int64_t amount, kj::StringPtr from, kj::StringPtr to) {
    auto response = quote(amount, from, to);
    KJ_ASSERT(response.getResult().isQuote(), response.getResult().toString().flatten());
    return kj::heapString(response.getResult().getQuote().getQuoteId());
  }

  capnp::Response<schema::Fx::ConvertResults> convert(kj::StringPtr id,
                                                      kj::Maybe<int64_t> amount = nullptr,
                                                      kj::StringPtr currency = "") {
    auto request = fx.convertRequest();
    request.setQuoteId(id);
    KJ_IF_MAYBE (minor, amount) {
      auto money = request.initAmount();
      money.setMinorUnits(*minor);
      money.setCurrency(currency);
    }
    return request.send().wait(host.waitScope());
  }

  payhost::testing::TestHost host;
  schema::Fx::Client fx;
};

::testing::AssertionResult isRejected(FxResult::Reader result, RejectCode code) {
  if (result.isRejected() && result.getRejected().getCode() == code) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected rejected " << static_cast<int>(code) << ", got "
                                       << result.toString().flatten().cStr();
}

TEST(Fx, QuotesCarryTheRateTextTargetAndExpiry) {
  Harness fx;
  auto response = fx.quote(10000, "EUR", "USD");
  auto result = response.getResult();
  ASSERT_TRUE(result.isQuote()) << result.toString().flatten().cStr();
  auto quote = result.getQuote();
  EXPECT_EQ(quote.getQuoteId(), "fxq_0_1");
  EXPECT_EQ(quote.getSource().getMinorUnits(), 10000);
  EXPECT_EQ(quote.getSource().getCurrency(), "EUR");
  EXPECT_EQ(quote.getTarget().getMinorUnits(), 10842);  // 100.00 EUR * 1.0842 = 108.42 USD
  EXPECT_EQ(quote.getTarget().getCurrency(), "USD");
  EXPECT_EQ(quote.getRate(), "1.0842");
  // The test host's clock starts at 2026-01-01T00:00:00Z; quotes live 30 s here.
  EXPECT_EQ(quote.getExpiresAtUnixMs(), int64_t{1767225600} * 1000 + 30'000);
  ASSERT_EQ(fx.host.logs().size(), 1u);
  EXPECT_EQ(fx.host.logs()[0].line,
            "fx.quote outcome=quoted quote=fxq_0_1 source=10000 EUR target=10842 USD "
            "rate=1.0842");
}

TEST(Fx, ConvertsBetweenCurrenciesOfDifferentExponents) {
  Harness fx;
  EXPECT_EQ(fx.quoted(1999, "USD", "JPY"), 3003);  // 19.99 * 150.25 = 3003.4975 yen
  EXPECT_EQ(fx.quoted(1000, "JPY", "USD"), 666);   // 6.655 USD: 665.5 cents, tie -> even 666
  EXPECT_EQ(fx.quoted(3000, "JPY", "USD"), 1996);  // 19.965 USD: 1996.5 cents, tie -> 1996
  EXPECT_EQ(fx.quoted(1000, "USD", "KWD"), 3070);  // 3.0705 KWD: 3070.5 fils, tie -> 3070
  EXPECT_EQ(fx.quoted(1001, "USD", "KWD"), 3074);  // 3.0735705 KWD -> 3074 fils
  EXPECT_EQ(fx.quoted(1000, "KWD", "USD"), 326);   // 3.2568 USD -> 326 cents
  EXPECT_EQ(fx.quoted(1000, "KWD", "JPY"), 490);   // 489.5 yen, tie -> 490
  EXPECT_EQ(fx.quoted(3000, "KWD", "JPY"), 1468);  // 1468.5 yen, tie -> 1468
}

TEST(Fx, TiesRoundHalfEven) {
  Harness fx;
  EXPECT_EQ(fx.quoted(1, "EUR", "GBP"), 2);   // 1.5 -> 2
  EXPECT_EQ(fx.quoted(3, "EUR", "GBP"), 4);   // 4.5 -> 4
  EXPECT_EQ(fx.quoted(5, "EUR", "GBP"), 8);   // 7.5 -> 8
  EXPECT_EQ(fx.quoted(7, "EUR", "GBP"), 10);  // 10.5 -> 10
}

TEST(Fx, ConvertUsesTheQuotedRateForTheQuotedOrAnotherAmount) {
  Harness fx;
  auto id = fx.quoteId(10000, "EUR", "USD");
  auto whole = fx.convert(id);
  ASSERT_TRUE(whole.getResult().isConverted()) << whole.getResult().toString().flatten().cStr();
  EXPECT_EQ(whole.getResult().getConverted().getTarget().getMinorUnits(), 10842);
  EXPECT_EQ(whole.getResult().getConverted().getQuoteId(), id);

  auto part = fx.convert(id, int64_t{2500}, "EUR");
  ASSERT_TRUE(part.getResult().isConverted());
  EXPECT_EQ(part.getResult().getConverted().getSource().getMinorUnits(), 2500);
  // 25.00 EUR * 1.0842 = 27.105 USD = 2710.5 cents: a tie, 2710 is even.
  EXPECT_EQ(part.getResult().getConverted().getTarget().getMinorUnits(), 2710);
}

TEST(Fx, ConvertRefusesOtherCurrenciesAndNonPositiveAmounts) {
  Harness fx;
  auto id = fx.quoteId(10000, "EUR", "USD");
  EXPECT_TRUE(
      isRejected(fx.convert(id, int64_t{100}, "USD").getResult(), RejectCode::CURRENCY_MISMATCH));
  EXPECT_TRUE(
      isRejected(fx.convert(id, int64_t{0}, "EUR").getResult(), RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(
      isRejected(fx.convert(id, int64_t{-5}, "EUR").getResult(), RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(fx.convert("fxq_0_99").getResult(), RejectCode::UNKNOWN_QUOTE));
  EXPECT_TRUE(isRejected(fx.convert("").getResult(), RejectCode::UNKNOWN_QUOTE));
}

TEST(Fx, QuotesExpireOnTheClock) {
  Harness fx;
  auto id = fx.quoteId(10000, "EUR", "USD");
  fx.host.advanceTime(29'999 * kj::MILLISECONDS);
  EXPECT_TRUE(fx.convert(id).getResult().isConverted());
  fx.host.advanceTime(1 * kj::MILLISECONDS);
  EXPECT_TRUE(isRejected(fx.convert(id).getResult(), RejectCode::QUOTE_EXPIRED));
  // A new quote works; the old one is forgotten a TTL after it expired.
  fx.host.advanceTime(30 * kj::SECONDS);
  auto fresh = fx.quoteId(10000, "EUR", "USD");
  EXPECT_TRUE(fx.convert(fresh).getResult().isConverted());
  EXPECT_TRUE(isRejected(fx.convert(id).getResult(), RejectCode::UNKNOWN_QUOTE));
}

TEST(Fx, RefusesOverflowZeroAndBadAmounts) {
  Harness fx;
  constexpr int64_t MAX = std::numeric_limits<int64_t>::max();
  EXPECT_TRUE(isRejected(fx.quote(MAX, "JPY", "KRW").getResult(), RejectCode::AMOUNT_OVERFLOW));
  EXPECT_TRUE(isRejected(fx.quote(970881267037344822, "JPY", "KRW").getResult(),
                         RejectCode::AMOUNT_OVERFLOW));
  EXPECT_EQ(fx.quoted(970881267037344821, "JPY", "KRW"), 9223372036854775800);
  EXPECT_TRUE(isRejected(fx.quote(1, "KWD", "USD").getResult(), RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(fx.quote(0, "EUR", "USD").getResult(), RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(isRejected(fx.quote(-1, "EUR", "USD").getResult(), RejectCode::INVALID_REQUEST));

  // Converting more than quoted can overflow too.
  auto id = fx.quoteId(1, "JPY", "KRW");
  EXPECT_TRUE(isRejected(fx.convert(id, MAX, "JPY").getResult(), RejectCode::AMOUNT_OVERFLOW));
}

TEST(Fx, RefusesUnknownCurrenciesAndPairsWithoutARate) {
  Harness fx;
  EXPECT_TRUE(
      isRejected(fx.quote(100, "EUX", "USD").getResult(), RejectCode::UNSUPPORTED_CURRENCY));
  EXPECT_TRUE(
      isRejected(fx.quote(100, "EUR", "usd").getResult(), RejectCode::UNSUPPORTED_CURRENCY));
  EXPECT_TRUE(
      isRejected(fx.quote(100, "USD", "EUR").getResult(), RejectCode::UNSUPPORTED_CURRENCY));
  EXPECT_TRUE(
      isRejected(fx.quote(100, "GBP", "GBP").getResult(), RejectCode::UNSUPPORTED_CURRENCY));
}

TEST(Fx, RefusesBadConfig) {
  for (auto config :
       {"[rates]\nEURUSD = \"1.1\"", "[rates]\nEUR_XXX = \"1.1\"", "[rates]\nEUR_USD = 1.1",
        "[rates]\nEUR_USD = \"1.1.1\"", "[rates]\nEUR_USD = \"-1\"", "[rates]\nEUR_USD = \"0\"",
        "quote_ttl_s = 0", "quote_ttl_s = 86401", "max_quotes = 0"}) {
    EXPECT_ANY_THROW(payhost::testing::TestHost(*payhostPluginDescriptor(), config)) << config;
  }
  // An empty table is allowed: every quote is refused.
  Harness empty("");
  EXPECT_TRUE(
      isRejected(empty.quote(100, "EUR", "USD").getResult(), RejectCode::UNSUPPORTED_CURRENCY));
}

TEST(Fx, RefusesQuotesBeyondTheLiveLimitAsOverloaded) {
  Harness fx("max_quotes = 2\n[rates]\nEUR_USD = \"1.0842\"");
  fx.quoteId(100, "EUR", "USD");
  fx.quoteId(100, "EUR", "USD");
  try {
    fx.quote(100, "EUR", "USD");
    ADD_FAILURE() << "a third live quote was accepted";
  } catch (const kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::OVERLOADED);
  }
  // Once they are forgotten (a TTL after expiry: 60 s + 60 s by default), quoting works again.
  fx.host.advanceTime(120 * kj::SECONDS);
  EXPECT_TRUE(fx.quote(100, "EUR", "USD").getResult().isQuote());
}

}  // namespace
}  // namespace payhost::plugins::fx
