#include "card-number.h"

#include <kj/debug.h>

#include <sys/random.h>

#include <cerrno>
#include <cstring>

namespace payhost::plugins::vault {

kj::StringPtr nameOf(Brand brand) {
  switch (brand) {
    case Brand::VISA:
      return "visa";
    case Brand::MASTERCARD:
      return "mastercard";
    case Brand::AMEX:
      return "amex";
    case Brand::DISCOVER:
      return "discover";
    case Brand::JCB:
      return "jcb";
    case Brand::DINERS_CLUB:
      return "dinersClub";
    case Brand::UNION_PAY:
      return "unionPay";
    case Brand::MAESTRO:
      return "maestro";
    case Brand::OTHER:
      return "other";
  }
  KJ_UNREACHABLE;
}

Pan::Pan(kj::ArrayPtr<const char> digits) {
  KJ_REQUIRE(digits.size() <= MAX_PAN_DIGITS, "card number too long");
  memcpy(buffer, digits.begin(), digits.size());
  length = digits.size();
}

Pan::Pan(Pan&& other) noexcept : length(other.length) {
  memcpy(buffer, other.buffer, sizeof(buffer));
  other.wipe();
}

Pan& Pan::operator=(Pan&& other) noexcept {
  if (this != &other) {
    memcpy(buffer, other.buffer, sizeof(buffer));
    length = other.length;
    other.wipe();
  }
  return *this;
}

Pan::~Pan() noexcept {
  wipe();
}

kj::StringPtr Pan::digits() const {
  return kj::StringPtr(buffer, length);
}

void Pan::wipe() noexcept {
  // explicit_bzero: a plain memset before destruction may be optimised away.
  explicit_bzero(buffer, sizeof(buffer));
  length = 0;
}

namespace {

// The number's first `n` digits as an integer (n <= 6); -1 when it is shorter.
int prefix(kj::ArrayPtr<const char> digits, size_t n) {
  if (digits.size() < n) return -1;
  int value = 0;
  for (size_t i = 0; i < n; ++i)
    value = value * 10 + (digits[i] - '0');
  return value;
}

bool inRange(int value, int low, int high) {
  return value >= low && value <= high;
}

}  // namespace

bool luhnValid(kj::ArrayPtr<const char> digits) {
  if (digits.size() == 0) return false;
  int sum = 0;
  bool doubled = false;
  for (size_t i = digits.size(); i-- > 0;) {
    char c = digits[i];
    if (c < '0' || c > '9') return false;
    int d = c - '0';
    if (doubled) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    doubled = !doubled;
  }
  return sum % 10 == 0;
}

Brand brandOf(kj::ArrayPtr<const char> digits) {
  int p1 = prefix(digits, 1);
  int p2 = prefix(digits, 2);
  int p3 = prefix(digits, 3);
  int p4 = prefix(digits, 4);
  int p6 = prefix(digits, 6);
  if (p1 == 4) return Brand::VISA;
  if (p2 == 34 || p2 == 37) return Brand::AMEX;
  if (inRange(p2, 51, 55) || inRange(p4, 2221, 2720)) return Brand::MASTERCARD;
  if (p4 == 6011 || inRange(p3, 644, 649) || p2 == 65) return Brand::DISCOVER;
  if (inRange(p4, 3528, 3589)) return Brand::JCB;
  if (p2 == 36 || inRange(p3, 300, 305) || p4 == 3095 || p2 == 38 || p2 == 39) {
    return Brand::DINERS_CLUB;
  }
  if (p2 == 62) return Brand::UNION_PAY;
  if (p2 == 50 || inRange(p2, 56, 58) || p4 == 6304 || p3 == 639 || p2 == 67 ||
      inRange(p6, 676770, 676774)) {
    return Brand::MAESTRO;
  }
  return Brand::OTHER;
}

bool lengthValid(Brand brand, size_t length) {
  switch (brand) {
    case Brand::VISA:
      return length == 13 || length == 16 || length == 19;
    case Brand::MASTERCARD:
      return length == 16;
    case Brand::AMEX:
      return length == 15;
    case Brand::DISCOVER:
    case Brand::JCB:
    case Brand::UNION_PAY:
      return length >= 16 && length <= 19;
    case Brand::DINERS_CLUB:
      return length >= 14 && length <= 19;
    case Brand::MAESTRO:
    case Brand::OTHER:
      return length >= MIN_PAN_DIGITS && length <= MAX_PAN_DIGITS;
  }
  KJ_UNREACHABLE;
}

kj::Maybe<CheckedCard> checkCard(kj::StringPtr input, kj::StringPtr& problem) {
  char digits[MAX_PAN_DIGITS];
  size_t count = 0;
  KJ_DEFER(explicit_bzero(digits, sizeof(digits)));
  for (char c : input) {
    if (c == ' ' || c == '-') continue;
    if (c < '0' || c > '9') {
      problem = "card number must be digits (spaces and dashes between groups are ignored)";
      return nullptr;
    }
    if (count == MAX_PAN_DIGITS) {
      problem = "card number must have 12 to 19 digits";
      return nullptr;
    }
    digits[count++] = c;
  }
  auto number = kj::arrayPtr(digits, count);
  if (count < MIN_PAN_DIGITS) {
    problem = "card number must have 12 to 19 digits";
    return nullptr;
  }
  if (!luhnValid(number)) {
    problem = "card number fails the Luhn check (mistyped?)";
    return nullptr;
  }
  auto brand = brandOf(number);
  if (!lengthValid(brand, count)) {
    switch (brand) {
      case Brand::VISA:
        problem = "a visa card number has 13, 16 or 19 digits";
        break;
      case Brand::MASTERCARD:
        problem = "a mastercard card number has 16 digits";
        break;
      case Brand::AMEX:
        problem = "an amex card number has 15 digits";
        break;
      case Brand::DINERS_CLUB:
        problem = "a diners club card number has 14 to 19 digits";
        break;
      default:
        problem = "this card's brand uses 16 to 19 digits";
        break;
    }
    return nullptr;
  }
  return CheckedCard{Pan(number), brand};
}

kj::Maybe<kj::StringPtr> checkExpiry(uint32_t month, uint32_t year, uint32_t currentYear,
                                     uint32_t currentMonth) {
  if (month < 1 || month > 12) return "expiryMonth must be 1 to 12"_kj;
  if (year < 2000 || year > 9999) return "expiryYear must have four digits"_kj;
  if (year * 12 + month < currentYear * 12 + currentMonth) return "the card has expired"_kj;
  if (year > currentYear + 30) return "expiryYear is more than 30 years away"_kj;
  return nullptr;
}

kj::String newToken() {
  constexpr char LETTERS[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  constexpr size_t LETTER_COUNT = sizeof(LETTERS) - 1;
  // Rejection sampling keeps the letters uniform: bytes at or above 208 (4 * 52) are redrawn.
  constexpr unsigned LIMIT = 256 / LETTER_COUNT * LETTER_COUNT;
  auto token = kj::heapString(4 + TOKEN_RANDOM_CHARS);
  memcpy(token.begin(), "tok_", 4);
  size_t filled = 0;
  unsigned char random[64];
  while (filled < TOKEN_RANDOM_CHARS) {
    ssize_t got = getrandom(random, sizeof(random), 0);
    if (got < 0 && errno == EINTR) continue;
    KJ_ASSERT(got > 0, "getrandom failed", errno);
    for (ssize_t i = 0; i < got && filled < TOKEN_RANDOM_CHARS; ++i) {
      if (random[i] >= LIMIT) continue;
      token[4 + filled++] = LETTERS[random[i] % LETTER_COUNT];
    }
  }
  return token;
}

bool isVaultToken(kj::StringPtr token) {
  if (token.size() != 4 + TOKEN_RANDOM_CHARS || !token.startsWith("tok_")) return false;
  for (char c : token.slice(4)) {
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) return false;
  }
  return true;
}

}  // namespace payhost::plugins::vault
