// Exact rates and half-even conversion, with expected values computed by hand in the comments.

#include "rate.h"

#include <kj/debug.h>

#include <gtest/gtest.h>

#include <limits>

namespace payhost::plugins::fx {
namespace {

constexpr int64_t MAX = std::numeric_limits<int64_t>::max();

Rate rate(kj::StringPtr text) {
  kj::StringPtr problem;
  KJ_IF_MAYBE (parsed, tryParseRate(text, problem)) {
    return *parsed;
  }
  KJ_FAIL_ASSERT("rate refused", text, problem);
}

// Converts, or returns -1 - (error) so a test can expect an error as a value.
int64_t converted(int64_t amount, uint8_t from, uint8_t to, kj::StringPtr rateText) {
  ConvertError error = ConvertError::NOT_POSITIVE;
  KJ_IF_MAYBE (result, convert(amount, from, to, rate(rateText), error)) {
    return *result;
  }
  return -1 - static_cast<int64_t>(error);
}
constexpr int64_t NOT_POSITIVE = -1 - static_cast<int64_t>(ConvertError::NOT_POSITIVE);
constexpr int64_t OVERFLOWS = -1 - static_cast<int64_t>(ConvertError::OVERFLOW);
constexpr int64_t ZERO = -1 - static_cast<int64_t>(ConvertError::ZERO);

TEST(Rate, ParsesDecimalTextExactlyAndNormalises) {
  EXPECT_EQ(rate("1.0842"), (Rate{10842, 4}));
  EXPECT_EQ(rate("150.250"), (Rate{15025, 2}));
  EXPECT_EQ(rate("2"), (Rate{2, 0}));
  EXPECT_EQ(rate("2.000"), (Rate{2, 0}));
  EXPECT_EQ(rate("0.5"), (Rate{5, 1}));
  EXPECT_EQ(rate("00.5"), (Rate{5, 1}));
  EXPECT_EQ(rate("0.000000000000001"), (Rate{1, 15}));
  EXPECT_EQ(rate("123456789012345"), (Rate{123456789012345, 0}));
  EXPECT_EQ(rate("1234567.89012345"), (Rate{123456789012345, 8}));
  EXPECT_EQ(formatRate(rate("1.0842")), "1.0842");
  EXPECT_EQ(formatRate(rate("150.250")), "150.25");
  EXPECT_EQ(formatRate(rate("0.006655")), "0.006655");
  EXPECT_EQ(formatRate(rate("7.0")), "7");
}

TEST(Rate, RefusesAnythingButAPositiveDecimal) {
  for (auto bad :
       {"", ".5", "5.", "-1", "+1", "1e3", "0", "0.000", " 1", "1 ", "1,5", "1.2.3", "0x10",
        "0.0000000000000001", "1234567890123456", "1.234567890123456", "NaN", "inf"}) {
    kj::StringPtr problem;
    EXPECT_TRUE(tryParseRate(bad, problem) == nullptr) << bad;
    EXPECT_GT(problem.size(), 0u) << bad;
  }
}

TEST(Rate, HalfEvenDivision) {
  EXPECT_EQ(divideHalfEven(5, 2), 2u);    // 2.5 -> 2
  EXPECT_EQ(divideHalfEven(7, 2), 4u);    // 3.5 -> 4
  EXPECT_EQ(divideHalfEven(25, 10), 2u);  // 2.5 -> 2
  EXPECT_EQ(divideHalfEven(35, 10), 4u);  // 3.5 -> 4
  EXPECT_EQ(divideHalfEven(26, 10), 3u);  // 2.6 -> 3
  EXPECT_EQ(divideHalfEven(24, 10), 2u);  // 2.4 -> 2
  EXPECT_EQ(divideHalfEven(0, 3), 0u);
  EXPECT_EQ(divideHalfEven(1, 3), 0u);
  EXPECT_EQ(divideHalfEven(2, 3), 1u);
  // At the top of the 128-bit range, no intermediate overflows: (2^128 - 1) / 2 = 2^127 - 0.5,
  // a tie whose lower neighbour 2^127 - 1 is odd, so it rounds up to 2^127.
  Uint128 top = ~Uint128{0};
  EXPECT_TRUE(divideHalfEven(top, 2) == (Uint128{1} << 127));
  EXPECT_TRUE(divideHalfEven(top, top) == 1);
}

TEST(Rate, ConvertsWithHandComputedValues) {
  // 100.00 EUR * 1.0842 = 108.42 USD.
  EXPECT_EQ(converted(10000, 2, 2, "1.0842"), 10842);
  // 0.01 EUR * 1.0842 = 0.010842 USD -> 1 cent.
  EXPECT_EQ(converted(1, 2, 2, "1.0842"), 1);
  // 19.99 USD * 150.25 = 3003.4975 JPY -> 3003 (JPY has no minor unit).
  EXPECT_EQ(converted(1999, 2, 0, "150.25"), 3003);
  // 1000 JPY * 0.006655 = 6.655 USD = 665.5 cents: a tie, 665 is odd -> 666.
  EXPECT_EQ(converted(1000, 0, 2, "0.006655"), 666);
  // 3000 JPY * 0.006655 = 19.965 USD = 1996.5 cents: a tie, 1996 is even -> 1996.
  EXPECT_EQ(converted(3000, 0, 2, "0.006655"), 1996);
  // 10.00 USD * 0.30705 = 3.0705 KWD = 3070.5 fils: a tie, 3070 is even -> 3070.
  EXPECT_EQ(converted(1000, 2, 3, "0.30705"), 3070);
  // 10.01 USD * 0.30705 = 3.0735705 KWD = 3073.5705 fils -> 3074.
  EXPECT_EQ(converted(1001, 2, 3, "0.30705"), 3074);
  // 1.000 KWD * 3.2568 = 3.2568 USD = 325.68 cents -> 326.
  EXPECT_EQ(converted(1000, 3, 2, "3.2568"), 326);
  // 1.000 KWD * 489.5 = 489.5 JPY: a tie, 489 is odd -> 490; 3.000 KWD -> 1468.5 -> 1468.
  EXPECT_EQ(converted(1000, 3, 0, "489.5"), 490);
  EXPECT_EQ(converted(3000, 3, 0, "489.5"), 1468);
  // 0.003 KWD * 489.5 = 1.4685 JPY -> 1.
  EXPECT_EQ(converted(3, 3, 0, "489.5"), 1);
}

TEST(Rate, TiesRoundToEven) {
  // x * 1.5 for x = 1, 3, 5, 7: 1.5 -> 2, 4.5 -> 4, 7.5 -> 8, 10.5 -> 10.
  EXPECT_EQ(converted(1, 2, 2, "1.5"), 2);
  EXPECT_EQ(converted(3, 2, 2, "1.5"), 4);
  EXPECT_EQ(converted(5, 2, 2, "1.5"), 8);
  EXPECT_EQ(converted(7, 2, 2, "1.5"), 10);
  // Just off a tie goes to the nearer neighbour.
  EXPECT_EQ(converted(15, 2, 0, "100.000001"), 15);  // 15.00000015 -> 15
  EXPECT_EQ(converted(15, 1, 0, "1"), 2);            // 1.5 -> 2
  EXPECT_EQ(converted(25, 1, 0, "1"), 2);            // 2.5 -> 2
}

TEST(Rate, RefusesOverflowZeroAndNonPositiveAmounts) {
  // 970881267037344821 * 9.5 = 9223372036854775799.5: a tie, rounds to the even ...800, which
  // still fits; one more unit is 9223372036854775809, above INT64_MAX.
  EXPECT_EQ(converted(970881267037344821, 0, 0, "9.5"), 9223372036854775800);
  EXPECT_EQ(converted(970881267037344822, 0, 0, "9.5"), OVERFLOWS);
  EXPECT_EQ(converted(MAX, 0, 0, "9.5"), OVERFLOWS);
  // The largest amount, the largest rate and the widest exponent gap stay exact.
  EXPECT_EQ(converted(MAX, 0, 4, "999999999999999"), OVERFLOWS);
  // 922337203685477.5807 * 10^-15 = 0.92... -> 1.
  EXPECT_EQ(converted(MAX, 4, 0, "0.000000000000001"), 1);
  EXPECT_EQ(converted(MAX, 2, 2, "1"), MAX);
  EXPECT_EQ(converted(MAX, 4, 0, "1"), 922337203685478);  // 922337203685477.5807 -> ...478
  // 0.001 KWD * 3.2568 = 0.32568 cents -> 0: refused rather than a zero amount.
  EXPECT_EQ(converted(1, 3, 2, "3.2568"), ZERO);
  EXPECT_EQ(converted(0, 2, 2, "1.5"), NOT_POSITIVE);
  EXPECT_EQ(converted(-100, 2, 2, "1.5"), NOT_POSITIVE);
}

}  // namespace
}  // namespace payhost::plugins::fx
