// Exact decimal exchange rates and conversion for the FX plugin. No floating point anywhere: a
// rate is an integer mantissa and a count of decimal places, and a conversion is one 128-bit
// multiplication and one division, rounded half-even (banker's rounding) to the target
// currency's minor unit.
//
// Immutable values; every function is thread-safe.

#ifndef PAYHOST_PLUGINS_FX_RATE_H_
#define PAYHOST_PLUGINS_FX_RATE_H_

#include <kj/common.h>
#include <kj/string.h>

#include <cstdint>

namespace payhost::plugins::fx {

// GCC's and Clang's 128-bit integer (an extension, hence the keyword).
__extension__ typedef unsigned __int128 Uint128;

// Rates have at most 15 significant digits and 15 decimal places. With amounts of at most 2^63
// minor units and exponents of at most 4 this keeps every intermediate product below 2^127.
constexpr uint32_t MAX_RATE_DIGITS = 15;
constexpr uint32_t MAX_RATE_SCALE = 15;

// mantissa / 10^scale units of the target currency per unit of the source currency (both in
// major units). Normalised: no trailing zeros in the fraction, so equal rates are equal values.
struct Rate {
  int64_t mantissa = 0;
  uint32_t scale = 0;

  bool operator==(const Rate& other) const = default;
};

// Parses "1.0842", "150.25", "0.006655", "2": digits with an optional '.', positive, at most
// MAX_RATE_DIGITS significant digits and MAX_RATE_SCALE decimals. Null (with `problem` set) on
// anything else: signs, exponents, spaces, zero.
kj::Maybe<Rate> tryParseRate(kj::StringPtr text, kj::StringPtr& problem);

// The canonical text of a rate: "1.0842", "2", "0.5".
kj::String formatRate(Rate rate);

enum class ConvertError {
  NOT_POSITIVE,  // the amount to convert is zero or negative
  OVERFLOW,      // the result does not fit int64 minor units
  ZERO,          // the result rounds to zero minor units
};

struct Converted {
  int64_t minorUnits;
};

// Converts `sourceMinor` minor units of a currency with `sourceExponent` decimals into minor
// units of a currency with `targetExponent` decimals at `rate`, rounding half-even:
//   target = sourceMinor * rate * 10^targetExponent / 10^sourceExponent
// Returns the result or the error through `error`.
kj::Maybe<int64_t> convert(int64_t sourceMinor, uint8_t sourceExponent, uint8_t targetExponent,
                           Rate rate, ConvertError& error);

// numerator / denominator (both non-negative, denominator positive) rounded half-even.
Uint128 divideHalfEven(Uint128 numerator, Uint128 denominator);

}  // namespace payhost::plugins::fx

#endif  // PAYHOST_PLUGINS_FX_RATE_H_
