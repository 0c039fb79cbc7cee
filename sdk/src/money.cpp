#include <payhost/money.h>

#include <kj/debug.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace payhost {

namespace {

// Active ISO 4217 codes with a minor unit, sorted by code (ISO 4217 amendment list as of 2026:
// XCG replaced ANG in 2025, ZWG replaced ZWL in 2024, BGN became EUR in 2026, HRK in 2023).
constexpr CurrencyInfo CURRENCIES[] = {
    {"AED", 784, 2}, {"AFN", 971, 2}, {"ALL", 8, 2},   {"AMD", 51, 2},  {"AOA", 973, 2},
    {"ARS", 32, 2},  {"AUD", 36, 2},  {"AWG", 533, 2}, {"AZN", 944, 2}, {"BAM", 977, 2},
    {"BBD", 52, 2},  {"BDT", 50, 2},  {"BHD", 48, 3},  {"BIF", 108, 0}, {"BMD", 60, 2},
    {"BND", 96, 2},  {"BOB", 68, 2},  {"BOV", 984, 2}, {"BRL", 986, 2}, {"BSD", 44, 2},
    {"BTN", 64, 2},  {"BWP", 72, 2},  {"BYN", 933, 2}, {"BZD", 84, 2},  {"CAD", 124, 2},
    {"CDF", 976, 2}, {"CHE", 947, 2}, {"CHF", 756, 2}, {"CHW", 948, 2}, {"CLF", 990, 4},
    {"CLP", 152, 0}, {"CNY", 156, 2}, {"COP", 170, 2}, {"COU", 970, 2}, {"CRC", 188, 2},
    {"CUP", 192, 2}, {"CVE", 132, 2}, {"CZK", 203, 2}, {"DJF", 262, 0}, {"DKK", 208, 2},
    {"DOP", 214, 2}, {"DZD", 12, 2},  {"EGP", 818, 2}, {"ERN", 232, 2}, {"ETB", 230, 2},
    {"EUR", 978, 2}, {"FJD", 242, 2}, {"FKP", 238, 2}, {"GBP", 826, 2}, {"GEL", 981, 2},
    {"GHS", 936, 2}, {"GIP", 292, 2}, {"GMD", 270, 2}, {"GNF", 324, 0}, {"GTQ", 320, 2},
    {"GYD", 328, 2}, {"HKD", 344, 2}, {"HNL", 340, 2}, {"HTG", 332, 2}, {"HUF", 348, 2},
    {"IDR", 360, 2}, {"ILS", 376, 2}, {"INR", 356, 2}, {"IQD", 368, 3}, {"IRR", 364, 2},
    {"ISK", 352, 0}, {"JMD", 388, 2}, {"JOD", 400, 3}, {"JPY", 392, 0}, {"KES", 404, 2},
    {"KGS", 417, 2}, {"KHR", 116, 2}, {"KMF", 174, 0}, {"KPW", 408, 2}, {"KRW", 410, 0},
    {"KWD", 414, 3}, {"KYD", 136, 2}, {"KZT", 398, 2}, {"LAK", 418, 2}, {"LBP", 422, 2},
    {"LKR", 144, 2}, {"LRD", 430, 2}, {"LSL", 426, 2}, {"LYD", 434, 3}, {"MAD", 504, 2},
    {"MDL", 498, 2}, {"MGA", 969, 2}, {"MKD", 807, 2}, {"MMK", 104, 2}, {"MNT", 496, 2},
    {"MOP", 446, 2}, {"MRU", 929, 2}, {"MUR", 480, 2}, {"MVR", 462, 2}, {"MWK", 454, 2},
    {"MXN", 484, 2}, {"MXV", 979, 2}, {"MYR", 458, 2}, {"MZN", 943, 2}, {"NAD", 516, 2},
    {"NGN", 566, 2}, {"NIO", 558, 2}, {"NOK", 578, 2}, {"NPR", 524, 2}, {"NZD", 554, 2},
    {"OMR", 512, 3}, {"PAB", 590, 2}, {"PEN", 604, 2}, {"PGK", 598, 2}, {"PHP", 608, 2},
    {"PKR", 586, 2}, {"PLN", 985, 2}, {"PYG", 600, 0}, {"QAR", 634, 2}, {"RON", 946, 2},
    {"RSD", 941, 2}, {"RUB", 643, 2}, {"RWF", 646, 0}, {"SAR", 682, 2}, {"SBD", 90, 2},
    {"SCR", 690, 2}, {"SDG", 938, 2}, {"SEK", 752, 2}, {"SGD", 702, 2}, {"SHP", 654, 2},
    {"SLE", 925, 2}, {"SOS", 706, 2}, {"SRD", 968, 2}, {"SSP", 728, 2}, {"STN", 930, 2},
    {"SVC", 222, 2}, {"SYP", 760, 2}, {"SZL", 748, 2}, {"THB", 764, 2}, {"TJS", 972, 2},
    {"TMT", 934, 2}, {"TND", 788, 3}, {"TOP", 776, 2}, {"TRY", 949, 2}, {"TTD", 780, 2},
    {"TWD", 901, 2}, {"TZS", 834, 2}, {"UAH", 980, 2}, {"UGX", 800, 0}, {"USD", 840, 2},
    {"USN", 997, 2}, {"UYI", 940, 0}, {"UYU", 858, 2}, {"UYW", 927, 4}, {"UZS", 860, 2},
    {"VED", 926, 2}, {"VES", 928, 2}, {"VND", 704, 0}, {"VUV", 548, 0}, {"WST", 882, 2},
    {"XAF", 950, 0}, {"XCD", 951, 2}, {"XCG", 532, 2}, {"XOF", 952, 0}, {"XPF", 953, 0},
    {"YER", 886, 2}, {"ZAR", 710, 2}, {"ZMW", 967, 2}, {"ZWG", 924, 2},
};

bool codeLess(const CurrencyInfo& row, kj::StringPtr code) {
  return strcmp(row.code, code.cStr()) < 0;
}

}  // namespace

kj::ArrayPtr<const CurrencyInfo> currencyTable() {
  return kj::arrayPtr(CURRENCIES, kj::size(CURRENCIES));
}

kj::Maybe<const CurrencyInfo&> findCurrency(kj::StringPtr code) {
  if (code.size() != 3) return nullptr;
  auto end = CURRENCIES + kj::size(CURRENCIES);
  auto row = std::lower_bound(CURRENCIES, end, code, codeLess);
  if (row == end || code != row->code) return nullptr;
  return *row;
}

int64_t powerOfTen(uint8_t exponent) {
  KJ_REQUIRE(exponent <= 18, "10^exponent does not fit int64", exponent);
  int64_t result = 1;
  for (uint8_t i = 0; i < exponent; ++i)
    result *= 10;
  return result;
}

kj::Maybe<int64_t> checkedAdd(int64_t a, int64_t b) {
  int64_t result;
  if (__builtin_add_overflow(a, b, &result)) return nullptr;
  return result;
}

kj::Maybe<int64_t> checkedSub(int64_t a, int64_t b) {
  int64_t result;
  if (__builtin_sub_overflow(a, b, &result)) return nullptr;
  return result;
}

kj::Maybe<int64_t> checkedMul(int64_t a, int64_t b) {
  int64_t result;
  if (__builtin_mul_overflow(a, b, &result)) return nullptr;
  return result;
}

kj::StringPtr moneyErrorMessage(MoneyError error) {
  switch (error) {
    case MoneyError::UNKNOWN_CURRENCY:
      return "currency is not an ISO 4217 code with a minor unit";
    case MoneyError::CURRENCY_MISMATCH:
      return "amounts are in different currencies";
    case MoneyError::OVERFLOW:
      return "amount overflows a 64-bit count of minor units";
    case MoneyError::NOT_POSITIVE:
      return "amount must be positive";
    case MoneyError::BAD_FORMAT:
      return "amount must be decimal digits with an optional '-' and '.'";
    case MoneyError::TOO_PRECISE:
      return "amount has more decimals than the currency's minor unit";
  }
  KJ_UNREACHABLE;
}

kj::Maybe<MoneyError> checkCharge(int64_t minorUnits, kj::StringPtr currency) {
  if (findCurrency(currency) == nullptr) return MoneyError::UNKNOWN_CURRENCY;
  if (minorUnits <= 0) return MoneyError::NOT_POSITIVE;
  return nullptr;
}

kj::String formatMinorUnits(int64_t minorUnits, uint8_t exponent) {
  // The magnitude as unsigned, so INT64_MIN has one too.
  uint64_t magnitude = minorUnits < 0 ? uint64_t{0} - static_cast<uint64_t>(minorUnits)
                                      : static_cast<uint64_t>(minorUnits);
  auto digits = kj::str(magnitude);
  kj::StringPtr sign = minorUnits < 0 ? "-"_kj : ""_kj;
  if (exponent == 0) return kj::str(sign, digits);
  // At least one digit before the point: pad with zeros.
  size_t width = size_t{exponent} + 1;
  kj::String padded = digits.size() >= width
                          ? kj::mv(digits)
                          : kj::str(kj::repeat('0', width - digits.size()), digits);
  size_t split = padded.size() - exponent;
  return kj::str(sign, padded.slice(0, split), ".", padded.slice(split));
}

kj::Maybe<Money> Money::tryOf(int64_t minorUnits, kj::StringPtr currency) {
  KJ_IF_MAYBE (row, findCurrency(currency)) {
    return Money(minorUnits, *row);
  }
  return nullptr;
}

kj::Maybe<MoneyError> Money::checkPlus(const Money& other) const {
  if (currency_ != other.currency_) return MoneyError::CURRENCY_MISMATCH;
  if (checkedAdd(minorUnits_, other.minorUnits_) == nullptr) return MoneyError::OVERFLOW;
  return nullptr;
}

kj::Maybe<MoneyError> Money::checkMinus(const Money& other) const {
  if (currency_ != other.currency_) return MoneyError::CURRENCY_MISMATCH;
  if (checkedSub(minorUnits_, other.minorUnits_) == nullptr) return MoneyError::OVERFLOW;
  return nullptr;
}

kj::Maybe<Money> Money::plus(const Money& other) const {
  if (currency_ != other.currency_) return nullptr;
  KJ_IF_MAYBE (sum, checkedAdd(minorUnits_, other.minorUnits_)) {
    return Money(*sum, *currency_);
  }
  return nullptr;
}

kj::Maybe<Money> Money::minus(const Money& other) const {
  if (currency_ != other.currency_) return nullptr;
  KJ_IF_MAYBE (difference, checkedSub(minorUnits_, other.minorUnits_)) {
    return Money(*difference, *currency_);
  }
  return nullptr;
}

kj::Maybe<Money> Money::times(int64_t factor) const {
  KJ_IF_MAYBE (product, checkedMul(minorUnits_, factor)) {
    return Money(*product, *currency_);
  }
  return nullptr;
}

bool Money::operator==(const Money& other) const {
  return currency_ == other.currency_ && minorUnits_ == other.minorUnits_;
}

int Money::compare(const Money& other) const {
  KJ_REQUIRE(currency_ == other.currency_, "comparing amounts in different currencies",
             currency_->code, other.currency_->code);
  return minorUnits_ < other.minorUnits_ ? -1 : minorUnits_ > other.minorUnits_ ? 1 : 0;
}

kj::String Money::decimal() const {
  return formatMinorUnits(minorUnits_, currency_->exponent);
}

kj::String Money::toString() const {
  return kj::str(decimal(), ' ', currency_->code);
}

kj::Maybe<Money> tryParseMoney(kj::StringPtr decimal, kj::StringPtr currency, MoneyError& error) {
  const CurrencyInfo* row = nullptr;
  KJ_IF_MAYBE (found, findCurrency(currency)) {
    row = found;
  } else {
    error = MoneyError::UNKNOWN_CURRENCY;
    return nullptr;
  }
  auto text = decimal.asArray();
  bool negative = text.size() > 0 && text[0] == '-';
  if (negative) text = text.slice(1, text.size());
  size_t integerDigits = 0;
  size_t fractionDigits = 0;
  bool seenPoint = false;
  // Accumulated as a negative number: the negative range is one larger, so INT64_MIN parses.
  int64_t value = 0;
  for (char c : text) {
    if (c == '.') {
      if (seenPoint) {
        error = MoneyError::BAD_FORMAT;
        return nullptr;
      }
      seenPoint = true;
      continue;
    }
    if (c < '0' || c > '9') {
      error = MoneyError::BAD_FORMAT;
      return nullptr;
    }
    if (seenPoint) {
      ++fractionDigits;
    } else {
      ++integerDigits;
    }
    if (fractionDigits > row->exponent) {
      error = MoneyError::TOO_PRECISE;
      return nullptr;
    }
    int64_t next;
    if (__builtin_mul_overflow(value, int64_t{10}, &next) ||
        __builtin_sub_overflow(next, int64_t{c - '0'}, &next)) {
      error = MoneyError::OVERFLOW;
      return nullptr;
    }
    value = next;
  }
  if (integerDigits == 0 || (seenPoint && fractionDigits == 0)) {
    error = MoneyError::BAD_FORMAT;
    return nullptr;
  }
  for (size_t i = fractionDigits; i < row->exponent; ++i) {
    if (__builtin_mul_overflow(value, int64_t{10}, &value)) {
      error = MoneyError::OVERFLOW;
      return nullptr;
    }
  }
  if (!negative) {
    if (value == std::numeric_limits<int64_t>::min()) {
      error = MoneyError::OVERFLOW;
      return nullptr;
    }
    value = -value;
  }
  return Money::tryOf(value, row->code);
}

}  // namespace payhost
