// Card number rules for the vault: normalisation, the Luhn check, brand prefixes and lengths,
// expiry, and the token format. Plain C++/KJ, no Cap'n Proto, so the rules test on their own.
//
// Nothing here copies a card number into a message: errors are fixed sentences. Immutable data;
// every function is thread-safe.

#ifndef PAYHOST_PLUGINS_VAULT_CARD_NUMBER_H_
#define PAYHOST_PLUGINS_VAULT_CARD_NUMBER_H_

#include <kj/array.h>
#include <kj/common.h>
#include <kj/string.h>

#include <cstdint>

namespace payhost::plugins::vault {

enum class Brand { VISA, MASTERCARD, AMEX, DISCOVER, JCB, DINERS_CLUB, UNION_PAY, MAESTRO, OTHER };

kj::StringPtr nameOf(Brand brand);

// Card numbers have 12 to 19 digits (ISO/IEC 7812).
constexpr size_t MIN_PAN_DIGITS = 12;
constexpr size_t MAX_PAN_DIGITS = 19;

// A card number in a buffer that is wiped when it is destroyed or moved from. Move-only.
class Pan {
public:
  Pan() = default;
  explicit Pan(kj::ArrayPtr<const char> digits);
  Pan(Pan&& other) noexcept;
  Pan& operator=(Pan&& other) noexcept;
  ~Pan() noexcept;
  KJ_DISALLOW_COPY(Pan);

  // The digits, NUL-terminated; valid while this object is.
  kj::StringPtr digits() const KJ_LIFETIMEBOUND;
  kj::ArrayPtr<const kj::byte> bytes() const KJ_LIFETIMEBOUND { return digits().asBytes(); }
  size_t size() const { return length; }

private:
  char buffer[MAX_PAN_DIGITS + 1] = {};
  size_t length = 0;

  void wipe() noexcept;
};

// What `checkCard` found: a normalised number and its brand, or why it was refused.
struct CheckedCard {
  Pan pan;
  Brand brand = Brand::OTHER;
};

// Strips the spaces and dashes people type between digit groups, then checks: digits only,
// 12 to 19 of them, the Luhn check digit, and the length rules of the brand its prefix names.
// On failure returns null and sets `problem` to a sentence that does not repeat the number.
kj::Maybe<CheckedCard> checkCard(kj::StringPtr input, kj::StringPtr& problem);

// The Luhn (mod 10) check over a string of digits.
bool luhnValid(kj::ArrayPtr<const char> digits);

// The brand named by the number's prefix (OTHER when none matches).
Brand brandOf(kj::ArrayPtr<const char> digits);

// Whether `length` digits is a valid length for `brand`.
bool lengthValid(Brand brand, size_t length);

// Null when month 1-12 and year are a valid expiry, not before `currentYear`/`currentMonth`
// and at most 30 years after; otherwise the reason.
kj::Maybe<kj::StringPtr> checkExpiry(uint32_t month, uint32_t year, uint32_t currentYear,
                                     uint32_t currentMonth);

// Tokens: "tok_" and 24 letters [A-Za-z] from a random source, about 137 bits. Letters only, so
// a token can never be mistaken for (or hide) a card number in a log.
constexpr size_t TOKEN_RANDOM_CHARS = 24;
kj::String newToken();
bool isVaultToken(kj::StringPtr token);

}  // namespace payhost::plugins::vault

#endif  // PAYHOST_PLUGINS_VAULT_CARD_NUMBER_H_
