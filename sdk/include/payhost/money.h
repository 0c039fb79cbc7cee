// Money for plugins: the ISO 4217 currency table (with each currency's exponent), amounts as a
// signed 64-bit count of minor units, arithmetic that reports overflow instead of wrapping, the
// checks a charge needs, and formatting.
//
//   KJ_IF_MAYBE (amount, payhost::Money::tryOf(1999, "EUR")) {
//     KJ_IF_MAYBE (total, amount->plus(*fee)) { ... } else { /* overflow or currency mismatch */ }
//   }
//   payhost::checkCharge(request.getMinorUnits(), request.getCurrency());  // null when fine
//
// The table holds the active ISO 4217 codes that have a minor unit (the funds codes BOV, CHE,
// CHW, CLF, COU, MXV, USN, UYI, UYW included; precious metals, XDR and test codes are not: they
// have no minor unit). Exponents: 0 for BIF, CLP, DJF, GNF, ISK, JPY, KMF, KRW, PYG, RWF, UGX,
// UYI, VND, VUV, XAF, XOF, XPF; 3 for BHD, IQD, JOD, KWD, LYD, OMR, TND; 4 for CLF and UYW; 2 for
// the others.
//
// Everything here is a value or a pointer into the static table: no allocation except the
// strings `format`/`toString` return, which the caller owns. Thread-safe (immutable data).

#ifndef PAYHOST_MONEY_H_
#define PAYHOST_MONEY_H_

#include <kj/array.h>
#include <kj/common.h>
#include <kj/string.h>

#include <cstdint>

namespace payhost {

// One row of the ISO 4217 table. The table is static: pointers to rows never dangle.
struct CurrencyInfo {
  // Three upper-case letters and a NUL.
  char code[4];
  // The ISO 4217 numeric code, e.g. 978 for EUR.
  uint16_t numeric;
  // Digits after the decimal point: 2 for EUR (cents), 0 for JPY, 3 for KWD (fils).
  uint8_t exponent;
};

// Every row, sorted by code.
kj::ArrayPtr<const CurrencyInfo> currencyTable();

// The row for `code` (exact, upper-case), or null when it is not an ISO 4217 code with a minor
// unit. The reference points into the static table.
kj::Maybe<const CurrencyInfo&> findCurrency(kj::StringPtr code);

// 10^exponent for exponents 0 to 18; the number of minor units in one major unit.
int64_t powerOfTen(uint8_t exponent);

// Arithmetic on counts of minor units: the result, or null when it would overflow int64.
[[nodiscard]] kj::Maybe<int64_t> checkedAdd(int64_t a, int64_t b);
[[nodiscard]] kj::Maybe<int64_t> checkedSub(int64_t a, int64_t b);
[[nodiscard]] kj::Maybe<int64_t> checkedMul(int64_t a, int64_t b);

// Why an amount or an operation on amounts was refused.
enum class MoneyError {
  UNKNOWN_CURRENCY,   // not in the ISO 4217 table
  CURRENCY_MISMATCH,  // adding or comparing two currencies
  OVERFLOW,           // the result does not fit int64 minor units
  NOT_POSITIVE,       // zero or negative where a charge is meant
  BAD_FORMAT,         // decimal text that is not [-]digits[.digits]
  TOO_PRECISE,        // more decimals than the currency's exponent
};

// A short English sentence for messages ("amount must be positive").
kj::StringPtr moneyErrorMessage(MoneyError error);
inline kj::StringPtr KJ_STRINGIFY(MoneyError error) {
  return moneyErrorMessage(error);
}

// Null when `minorUnits` of `currency` is a valid amount to charge (capture, refund, quote,
// transfer): a known currency and a positive amount. Otherwise the reason.
kj::Maybe<MoneyError> checkCharge(int64_t minorUnits, kj::StringPtr currency);

// `minorUnits` written in major units with the currency's exponent: (123456, 2) -> "1234.56",
// (-5, 3) -> "-0.005", (1234, 0) -> "1234". Exact for every int64, INT64_MIN included.
kj::String formatMinorUnits(int64_t minorUnits, uint8_t exponent);

// An amount in a known currency. Immutable value; the currency points into the static table.
class Money {
public:
  // Null when `currency` is not in the table.
  static kj::Maybe<Money> tryOf(int64_t minorUnits, kj::StringPtr currency);

  int64_t minorUnits() const { return minorUnits_; }
  const CurrencyInfo& currency() const { return *currency_; }
  kj::StringPtr currencyCode() const { return currency_->code; }
  uint8_t exponent() const { return currency_->exponent; }
  bool isPositive() const { return minorUnits_ > 0; }

  // Same currency required; null on a mismatch or an overflow (see `tryPlus` for the reason).
  [[nodiscard]] kj::Maybe<Money> plus(const Money& other) const;
  [[nodiscard]] kj::Maybe<Money> minus(const Money& other) const;
  [[nodiscard]] kj::Maybe<Money> times(int64_t factor) const;
  // The reason `plus`/`minus` would fail, or null when they would succeed.
  kj::Maybe<MoneyError> checkPlus(const Money& other) const;
  kj::Maybe<MoneyError> checkMinus(const Money& other) const;

  // Equal currency and amount. Comparisons across currencies are a bug: `compare` requires
  // (KJ_REQUIRE) the same currency and returns <0, 0 or >0.
  bool operator==(const Money& other) const;
  int compare(const Money& other) const;

  // "1234.56 EUR", "1234 JPY", "1.234 KWD".
  kj::String toString() const;
  // "1234.56": the amount alone.
  kj::String decimal() const;

private:
  Money(int64_t minorUnits, const CurrencyInfo& currency)
      : minorUnits_(minorUnits), currency_(&currency) {}

  int64_t minorUnits_;
  const CurrencyInfo* currency_;
};

inline kj::String KJ_STRINGIFY(const Money& money) {
  return money.toString();
}

// Parses decimal major units ("12.34", "-0.5", "1000") of `currency`: at most the currency's
// exponent of decimals (fewer are padded: "12.3" EUR is 1230 minor units), no exponent, no
// grouping, no '+'. Null on failure, with the reason in `error`.
kj::Maybe<Money> tryParseMoney(kj::StringPtr decimal, kj::StringPtr currency, MoneyError& error);

}  // namespace payhost

#endif  // PAYHOST_MONEY_H_
