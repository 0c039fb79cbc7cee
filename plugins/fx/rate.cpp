#include "rate.h"

#include <kj/debug.h>

#include <limits>

namespace payhost::plugins::fx {

namespace {

Uint128 pow10(uint32_t exponent) {
  Uint128 result = 1;
  for (uint32_t i = 0; i < exponent; ++i)
    result *= 10;
  return result;
}

}  // namespace

kj::Maybe<Rate> tryParseRate(kj::StringPtr text, kj::StringPtr& problem) {
  int64_t mantissa = 0;
  uint32_t scale = 0;
  uint32_t significant = 0;
  bool seenPoint = false;
  size_t integerDigits = 0;
  for (char c : text) {
    if (c == '.') {
      if (seenPoint || integerDigits == 0) {
        problem = "a rate is digits with at most one '.', e.g. \"1.0842\"";
        return nullptr;
      }
      seenPoint = true;
      continue;
    }
    if (c < '0' || c > '9') {
      problem = "a rate is digits with at most one '.', e.g. \"1.0842\"";
      return nullptr;
    }
    if (seenPoint) {
      ++scale;
    } else {
      ++integerDigits;
    }
    if (mantissa > 0 || c != '0') ++significant;
    if (significant > MAX_RATE_DIGITS || scale > MAX_RATE_SCALE + 18) {
      problem = "a rate has at most 15 significant digits";
      return nullptr;
    }
    mantissa = mantissa * 10 + (c - '0');
  }
  if (integerDigits == 0 || (seenPoint && scale == 0)) {
    problem = "a rate is digits with at most one '.', e.g. \"1.0842\"";
    return nullptr;
  }
  if (mantissa == 0) {
    problem = "a rate must be positive";
    return nullptr;
  }
  // Trailing zeros after the point carry no value.
  while (scale > 0 && mantissa % 10 == 0) {
    mantissa /= 10;
    --scale;
  }
  if (scale > MAX_RATE_SCALE) {
    problem = "a rate has at most 15 decimal places";
    return nullptr;
  }
  return Rate{mantissa, scale};
}

kj::String formatRate(Rate rate) {
  auto digits = kj::str(rate.mantissa);
  if (rate.scale == 0) return digits;
  size_t width = rate.scale + 1;
  if (digits.size() < width) digits = kj::str(kj::repeat('0', width - digits.size()), digits);
  size_t split = digits.size() - rate.scale;
  return kj::str(digits.slice(0, split), ".", digits.slice(split));
}

Uint128 divideHalfEven(Uint128 numerator, Uint128 denominator) {
  KJ_REQUIRE(denominator > 0);
  Uint128 quotient = numerator / denominator;
  Uint128 remainder = numerator % denominator;
  // Compared as remainder against denominator - remainder: 2 * remainder could overflow.
  Uint128 rest = denominator - remainder;
  if (remainder > rest || (remainder == rest && quotient % 2 == 1)) ++quotient;
  return quotient;
}

kj::Maybe<int64_t> convert(int64_t sourceMinor, uint8_t sourceExponent, uint8_t targetExponent,
                           Rate rate, ConvertError& error) {
  KJ_REQUIRE(rate.mantissa > 0 && rate.scale <= MAX_RATE_SCALE, "invalid rate");
  KJ_REQUIRE(sourceExponent <= 4 && targetExponent <= 4, "exponents above 4 are not supported");
  if (sourceMinor <= 0) {
    error = ConvertError::NOT_POSITIVE;
    return nullptr;
  }
  // < 2^63 * 10^4 * 10^15 < 2^63 * 2^14 * 2^50 = 2^127: cannot overflow.
  Uint128 numerator = static_cast<Uint128>(sourceMinor) * pow10(targetExponent) *
                      static_cast<Uint128>(rate.mantissa);
  Uint128 denominator = pow10(rate.scale + sourceExponent);
  Uint128 result = divideHalfEven(numerator, denominator);
  if (result > static_cast<Uint128>(std::numeric_limits<int64_t>::max())) {
    error = ConvertError::OVERFLOW;
    return nullptr;
  }
  if (result == 0) {
    error = ConvertError::ZERO;
    return nullptr;
  }
  return static_cast<int64_t>(result);
}

}  // namespace payhost::plugins::fx
