// The vault's card rules on their own: Luhn, brand lengths, expiry and token format.

#include "card-number.h"

#include <kj/debug.h>

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace payhost::plugins::vault {
namespace {

// `body` followed by the Luhn check digit that makes it valid.
std::string withCheckDigit(std::string body) {
  for (char d = '0'; d <= '9'; ++d) {
    std::string candidate = body + d;
    if (luhnValid(kj::arrayPtr(candidate.data(), candidate.size()))) return candidate;
  }
  KJ_FAIL_ASSERT("no check digit", body.c_str());
}

// A Luhn-valid number of `length` digits starting with `prefix`.
std::string cardNumber(const std::string& prefix, size_t length) {
  std::string body = prefix;
  while (body.size() < length - 1)
    body += '0';
  return withCheckDigit(body);
}

kj::Maybe<CheckedCard> check(const std::string& input, kj::StringPtr& problem) {
  return checkCard(kj::StringPtr(input.c_str()), problem);
}

// Accepted with `brand`, normalised to the digits.
::testing::AssertionResult accepted(const std::string& input, Brand brand) {
  kj::StringPtr problem;
  KJ_IF_MAYBE (card, check(input, problem)) {
    std::string digits;
    for (char c : input) {
      if (c != ' ' && c != '-') digits += c;
    }
    if (card->brand != brand) {
      return ::testing::AssertionFailure() << input << " is " << nameOf(card->brand).cStr();
    }
    if (std::string(card->pan.digits().cStr()) != digits) {
      return ::testing::AssertionFailure() << input << " normalised wrongly";
    }
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << input << " refused: " << problem.cStr();
}

// Refused, with a message that contains no four consecutive digits of the input.
::testing::AssertionResult refused(const std::string& input, const char* expectedPart) {
  kj::StringPtr problem;
  if (check(input, problem) != nullptr) {
    return ::testing::AssertionFailure() << input << " was accepted";
  }
  std::string message = problem.cStr();
  if (message.find(expectedPart) == std::string::npos) {
    return ::testing::AssertionFailure() << input << ": unexpected message " << message;
  }
  for (size_t i = 0; i + 4 <= input.size(); ++i) {
    if (message.find(input.substr(i, 4)) != std::string::npos) {
      return ::testing::AssertionFailure() << "message repeats part of the number: " << message;
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(CardNumber, LuhnAcceptsKnownTestNumbersAndRefusesOneDigitChanged) {
  for (auto number : {"4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
                      "3530111333300000", "30569309025904", "79927398713"}) {
    EXPECT_TRUE(luhnValid(kj::StringPtr(number).asArray())) << number;
  }
  for (auto number : {"4111111111111112", "5555555555554445", "378282246310006", "79927398710"}) {
    EXPECT_FALSE(luhnValid(kj::StringPtr(number).asArray())) << number;
  }
  EXPECT_FALSE(luhnValid(kj::StringPtr("").asArray()));
  EXPECT_FALSE(luhnValid(kj::StringPtr("4111a11111111111").asArray()));
}

TEST(CardNumber, AcceptsEachBrandAtItsLengths) {
  EXPECT_TRUE(accepted("4111111111111111", Brand::VISA));
  EXPECT_TRUE(accepted("4222222222222", Brand::VISA));
  EXPECT_TRUE(accepted(cardNumber("4", 19), Brand::VISA));
  EXPECT_TRUE(accepted("5555555555554444", Brand::MASTERCARD));
  EXPECT_TRUE(accepted("2223003122003222", Brand::MASTERCARD));
  EXPECT_TRUE(accepted("378282246310005", Brand::AMEX));
  EXPECT_TRUE(accepted("6011111111111117", Brand::DISCOVER));
  EXPECT_TRUE(accepted(cardNumber("65", 19), Brand::DISCOVER));
  EXPECT_TRUE(accepted("3530111333300000", Brand::JCB));
  EXPECT_TRUE(accepted("30569309025904", Brand::DINERS_CLUB));
  EXPECT_TRUE(accepted(cardNumber("62", 16), Brand::UNION_PAY));
  EXPECT_TRUE(accepted(cardNumber("6759", 12), Brand::MAESTRO));
  EXPECT_TRUE(accepted(cardNumber("9", 12), Brand::OTHER));
  EXPECT_TRUE(accepted(cardNumber("9", 19), Brand::OTHER));
}

TEST(CardNumber, IgnoresSpacesAndDashesBetweenGroups) {
  EXPECT_TRUE(accepted("4111 1111 1111 1111", Brand::VISA));
  EXPECT_TRUE(accepted("4111-1111-1111-1111", Brand::VISA));
  EXPECT_TRUE(accepted("3782 822463 10005", Brand::AMEX));
}

TEST(CardNumber, RefusesWrongLengthsForTheBrand) {
  EXPECT_TRUE(refused(cardNumber("4", 15), "visa card number has 13, 16 or 19"));
  EXPECT_TRUE(refused(cardNumber("4", 14), "visa card number has 13, 16 or 19"));
  EXPECT_TRUE(refused(cardNumber("51", 15), "mastercard card number has 16"));
  EXPECT_TRUE(refused(cardNumber("51", 17), "mastercard card number has 16"));
  EXPECT_TRUE(refused(cardNumber("37", 16), "amex card number has 15"));
  EXPECT_TRUE(refused(cardNumber("6011", 15), "16 to 19"));
  EXPECT_TRUE(refused(cardNumber("36", 13), "diners club"));
}

TEST(CardNumber, RefusesTooShortTooLongNonDigitsAndFailedLuhn) {
  EXPECT_TRUE(refused(cardNumber("9", 11), "12 to 19 digits"));
  EXPECT_TRUE(refused(cardNumber("9", 20), "12 to 19 digits"));
  EXPECT_TRUE(refused(cardNumber("4", 64), "12 to 19 digits"));
  EXPECT_TRUE(refused("", "12 to 19 digits"));
  EXPECT_TRUE(refused("4111111111111112", "Luhn"));
  EXPECT_TRUE(refused("4111x11111111111", "digits"));
  EXPECT_TRUE(refused("4111.1111.1111.1111", "digits"));
  EXPECT_TRUE(
      refused("\xd9\xa4"
              "111111111111111",
              "digits"));
}

TEST(CardNumber, PanBuffersAreWipedWhenMovedFrom) {
  Pan original(kj::StringPtr("4111111111111111").asArray());
  Pan moved(kj::mv(original));
  EXPECT_EQ(moved.digits(), "4111111111111111");
  EXPECT_EQ(original.size(), 0u);  // NOLINT(bugprone-use-after-move): checking the wipe
  EXPECT_EQ(original.digits(), "");
}

TEST(CardNumber, ExpiryMustBeAValidMonthNotInThePast) {
  EXPECT_TRUE(checkExpiry(11, 2026, 2026, 11) == nullptr);
  EXPECT_TRUE(checkExpiry(1, 2027, 2026, 11) == nullptr);
  EXPECT_TRUE(checkExpiry(12, 2056, 2026, 11) == nullptr);
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkExpiry(10, 2026, 2026, 11)), "the card has expired");
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkExpiry(12, 2025, 2026, 1)), "the card has expired");
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkExpiry(0, 2027, 2026, 11)), "expiryMonth must be 1 to 12");
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkExpiry(13, 2027, 2026, 11)), "expiryMonth must be 1 to 12");
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkExpiry(1, 27, 2026, 11)), "expiryYear must have four digits");
  EXPECT_EQ(KJ_ASSERT_NONNULL(checkExpiry(1, 2057, 2026, 11)),
            "expiryYear is more than 30 years away");
}

TEST(CardNumber, TokensAreRandomLettersAndRecognised) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    auto token = newToken();
    ASSERT_TRUE(isVaultToken(token)) << token.cStr();
    seen.insert(token.cStr());
  }
  EXPECT_EQ(seen.size(), 1000u);
  for (auto bad :
       {"", "tok_", "tok_abc", "tok_ABCDEFGHIJKLMNOPQRSTUVWX1", "tok_ABCDEFGHIJKLMNOPQRSTUVW1",
        "tak_ABCDEFGHIJKLMNOPQRSTUVWX", "tok_stolen", "4111111111111111"}) {
    EXPECT_FALSE(isVaultToken(bad)) << bad;
  }
  EXPECT_TRUE(isVaultToken("tok_ABCDEFGHIJKLMNOPQRSTUVWX"));
}

}  // namespace
}  // namespace payhost::plugins::vault
