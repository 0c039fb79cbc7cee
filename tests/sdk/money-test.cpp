// <payhost/money.h>: the ISO 4217 table, overflow-checked arithmetic, charge checks, parsing and
// formatting, including values at the edges of int64.
#include <payhost/money.h>

#include <kj/debug.h>

#include <gtest/gtest.h>

#include <cstring>
#include <limits>

namespace payhost {
namespace {

constexpr int64_t MAX = std::numeric_limits<int64_t>::max();
constexpr int64_t MIN = std::numeric_limits<int64_t>::min();

Money money(int64_t minorUnits, kj::StringPtr currency) {
  return KJ_ASSERT_NONNULL(Money::tryOf(minorUnits, currency));
}

uint8_t exponentOf(kj::StringPtr code) {
  return KJ_ASSERT_NONNULL(findCurrency(code)).exponent;
}

TEST(CurrencyTable, IsSortedWithoutDuplicatesAndEveryRowIsFound) {
  auto table = currencyTable();
  ASSERT_GT(table.size(), 150u);
  for (size_t i = 0; i < table.size(); ++i) {
    EXPECT_EQ(strlen(table[i].code), 3u) << table[i].code;
    if (i > 0) {
      EXPECT_LT(strcmp(table[i - 1].code, table[i].code), 0) << table[i].code;
    }
    auto& found = KJ_ASSERT_NONNULL(findCurrency(table[i].code));
    EXPECT_EQ(&found, &table[i]);
  }
}

TEST(CurrencyTable, ExponentsOfZeroTwoThreeAndFourDecimalCurrencies) {
  for (auto code : {"JPY", "KRW", "VND", "CLP", "ISK", "BIF", "PYG", "UGX", "XAF", "XOF", "XPF"}) {
    EXPECT_EQ(exponentOf(code), 0) << code;
  }
  for (auto code : {"BHD", "JOD", "KWD", "OMR", "TND", "IQD", "LYD"}) {
    EXPECT_EQ(exponentOf(code), 3) << code;
  }
  for (auto code : {"EUR", "USD", "GBP", "CHF", "INR", "XCG"}) {
    EXPECT_EQ(exponentOf(code), 2) << code;
  }
  EXPECT_EQ(exponentOf("CLF"), 4);
  EXPECT_EQ(KJ_ASSERT_NONNULL(findCurrency("EUR")).numeric, 978);
  EXPECT_EQ(KJ_ASSERT_NONNULL(findCurrency("KWD")).numeric, 414);
}

TEST(CurrencyTable, RefusesUnknownLowerCaseAndMetalCodes) {
  for (auto code : {"", "EU", "EURO", "eur", "Eur", "XAU", "XDR", "XTS", "XXX", "HRK", "ZZZ"}) {
    EXPECT_TRUE(findCurrency(code) == nullptr) << code;
    EXPECT_TRUE(Money::tryOf(1, code) == nullptr) << code;
  }
}

TEST(CheckedArithmetic, ReportsOverflowAtTheLimitsInsteadOfWrapping) {
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkedAdd(MAX - 1, 1)), MAX);
  EXPECT_TRUE(checkedAdd(MAX, 1) == nullptr);
  EXPECT_TRUE(checkedAdd(MAX, MAX) == nullptr);
  EXPECT_TRUE(checkedAdd(MIN, -1) == nullptr);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkedAdd(MIN, MAX)), -1);

  EXPECT_EQ(KJ_ASSERT_NONNULL(checkedSub(MIN + 1, 1)), MIN);
  EXPECT_TRUE(checkedSub(MIN, 1) == nullptr);
  EXPECT_TRUE(checkedSub(0, MIN) == nullptr);
  EXPECT_TRUE(checkedSub(MAX, -1) == nullptr);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkedSub(-1, MIN)), MAX);

  EXPECT_EQ(KJ_ASSERT_NONNULL(checkedMul(MAX, 1)), MAX);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkedMul(MIN, 1)), MIN);
  EXPECT_TRUE(checkedMul(MIN, -1) == nullptr);
  EXPECT_TRUE(checkedMul(MAX / 2 + 1, 2) == nullptr);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkedMul(MAX / 2, 2)), MAX - 1);
  EXPECT_TRUE(checkedMul(int64_t{1} << 32, int64_t{1} << 31) == nullptr);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkedMul(int64_t{1} << 31, int64_t{1} << 31)), int64_t{1} << 62);
}

TEST(Money, PlusMinusTimesRefuseOverflowAndMixedCurrencies) {
  auto big = money(MAX - 10, "EUR");
  EXPECT_EQ(KJ_ASSERT_NONNULL(big.plus(money(10, "EUR"))).minorUnits(), MAX);
  EXPECT_TRUE(big.plus(money(11, "EUR")) == nullptr);
  EXPECT_EQ(KJ_ASSERT_NONNULL(big.checkPlus(money(11, "EUR"))), MoneyError::OVERFLOW);
  EXPECT_TRUE(big.checkPlus(money(10, "EUR")) == nullptr);
  EXPECT_TRUE(big.plus(money(1, "USD")) == nullptr);
  EXPECT_EQ(KJ_ASSERT_NONNULL(big.checkPlus(money(1, "USD"))), MoneyError::CURRENCY_MISMATCH);

  auto low = money(MIN + 5, "JPY");
  EXPECT_EQ(KJ_ASSERT_NONNULL(low.minus(money(5, "JPY"))).minorUnits(), MIN);
  EXPECT_TRUE(low.minus(money(6, "JPY")) == nullptr);
  EXPECT_EQ(KJ_ASSERT_NONNULL(low.checkMinus(money(6, "JPY"))), MoneyError::OVERFLOW);

  EXPECT_EQ(KJ_ASSERT_NONNULL(money(MAX / 3, "KWD").times(3)).minorUnits(), MAX / 3 * 3);
  EXPECT_TRUE(money(MAX / 3 + 1, "KWD").times(3) == nullptr);
  EXPECT_TRUE(money(MIN, "KWD").times(-1) == nullptr);
}

TEST(Money, CompareRequiresOneCurrency) {
  EXPECT_LT(money(1, "EUR").compare(money(2, "EUR")), 0);
  EXPECT_EQ(money(MAX, "EUR").compare(money(MAX, "EUR")), 0);
  EXPECT_GT(money(MAX, "EUR").compare(money(MIN, "EUR")), 0);
  EXPECT_TRUE(money(5, "EUR") == money(5, "EUR"));
  EXPECT_FALSE(money(5, "EUR") == money(5, "USD"));
  EXPECT_ANY_THROW(money(1, "EUR").compare(money(1, "USD")));
}

TEST(Money, CheckChargeWantsAKnownCurrencyAndAPositiveAmount) {
  EXPECT_TRUE(checkCharge(1, "EUR") == nullptr);
  EXPECT_TRUE(checkCharge(MAX, "JPY") == nullptr);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkCharge(0, "EUR")), MoneyError::NOT_POSITIVE);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkCharge(-1, "EUR")), MoneyError::NOT_POSITIVE);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkCharge(MIN, "EUR")), MoneyError::NOT_POSITIVE);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkCharge(100, "EUX")), MoneyError::UNKNOWN_CURRENCY);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkCharge(100, "eur")), MoneyError::UNKNOWN_CURRENCY);
}

TEST(Money, FormatsWithTheCurrencysExponent) {
  EXPECT_EQ(money(123456, "EUR").toString(), "1234.56 EUR");
  EXPECT_EQ(money(5, "EUR").decimal(), "0.05");
  EXPECT_EQ(money(-5, "KWD").decimal(), "-0.005");
  EXPECT_EQ(money(1234, "KWD").toString(), "1.234 KWD");
  EXPECT_EQ(money(1234, "JPY").toString(), "1234 JPY");
  EXPECT_EQ(money(0, "USD").decimal(), "0.00");
  EXPECT_EQ(money(1, "CLF").decimal(), "0.0001");
  EXPECT_EQ(money(MAX, "EUR").decimal(), "92233720368547758.07");
  EXPECT_EQ(money(MIN, "EUR").decimal(), "-92233720368547758.08");
  EXPECT_EQ(money(MIN, "JPY").decimal(), "-9223372036854775808");
  EXPECT_EQ(kj::str(money(7, "BHD")), "0.007 BHD");
}

TEST(Money, ParsesDecimalTextExactly) {
  MoneyError error = MoneyError::BAD_FORMAT;
  auto parse = [&](kj::StringPtr text, kj::StringPtr currency) {
    return tryParseMoney(text, currency, error);
  };
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse("12.34", "EUR")).minorUnits(), 1234);
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse("12.3", "EUR")).minorUnits(), 1230);
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse("12", "EUR")).minorUnits(), 1200);
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse("-0.005", "KWD")).minorUnits(), -5);
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse("1000", "JPY")).minorUnits(), 1000);
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse("92233720368547758.07", "EUR")).minorUnits(), MAX);
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse("-92233720368547758.08", "EUR")).minorUnits(), MIN);
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse("9223372036854775807", "JPY")).minorUnits(), MAX);

  // Each formatted amount parses back to itself.
  for (int64_t value : {MAX, MIN, int64_t{0}, int64_t{-1}, int64_t{999}}) {
    for (auto code : {"EUR", "JPY", "KWD", "CLF"}) {
      auto original = money(value, code);
      EXPECT_TRUE(KJ_ASSERT_NONNULL(parse(original.decimal(), code)) == original)
          << original.toString().cStr();
    }
  }

  struct Bad {
    const char* text;
    const char* currency;
    MoneyError error;
  };
  for (auto bad : {
           Bad{"92233720368547758.08", "EUR", MoneyError::OVERFLOW},
           Bad{"9223372036854775808", "JPY", MoneyError::OVERFLOW},
           Bad{"-92233720368547758.09", "EUR", MoneyError::OVERFLOW},
           Bad{"100000000000000000", "EUR", MoneyError::OVERFLOW},
           Bad{"12.345", "EUR", MoneyError::TOO_PRECISE},
           Bad{"1.5", "JPY", MoneyError::TOO_PRECISE},
           Bad{"0.0001", "KWD", MoneyError::TOO_PRECISE},
           Bad{"", "EUR", MoneyError::BAD_FORMAT},
           Bad{"-", "EUR", MoneyError::BAD_FORMAT},
           Bad{".5", "EUR", MoneyError::BAD_FORMAT},
           Bad{"5.", "EUR", MoneyError::BAD_FORMAT},
           Bad{"1.2.3", "EUR", MoneyError::BAD_FORMAT},
           Bad{"+5", "EUR", MoneyError::BAD_FORMAT},
           Bad{"1,000", "EUR", MoneyError::BAD_FORMAT},
           Bad{"1e3", "EUR", MoneyError::BAD_FORMAT},
           Bad{"1", "EUX", MoneyError::UNKNOWN_CURRENCY},
       }) {
    error = MoneyError::NOT_POSITIVE;
    EXPECT_TRUE(parse(bad.text, bad.currency) == nullptr) << bad.text;
    EXPECT_EQ(error, bad.error) << bad.text;
  }
}

}  // namespace
}  // namespace payhost
