#include "rules.h"

#include <payhost/money.h>

#include <kj/debug.h>

#include <algorithm>

namespace payhost::plugins::fraud {

namespace {

constexpr size_t MAX_ID_BYTES = 255;
constexpr size_t MAX_TOKEN_BYTES = 128;
constexpr uint32_t MAX_SCORE = 1000;
constexpr int64_t MAX_WINDOW_S = int64_t{30} * 24 * 3600;
constexpr int64_t MAX_LIMIT = 1'000'000;

bool isPrintableId(kj::StringPtr id) {
  if (id.size() == 0 || id.size() > MAX_ID_BYTES) return false;
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

bool isCountry(kj::StringPtr country) {
  return country.size() == 0 || (country.size() == 2 && country[0] >= 'A' && country[0] <= 'Z' &&
                                 country[1] >= 'A' && country[1] <= 'Z');
}

bool looksLikeCardNumber(kj::StringPtr text) {
  size_t digits = 0;
  for (char c : text) {
    if (c >= '0' && c <= '9') {
      ++digits;
    } else if (c != ' ' && c != '-') {
      return false;
    }
  }
  return digits > 0;
}

int64_t integerIn(const Config& config, kj::StringPtr key, int64_t defaultValue, int64_t min,
                  int64_t max) {
  int64_t value = config.integer(key, defaultValue);
  KJ_REQUIRE(value >= min && value <= max, "fraud-screen config value out of range", key, value,
             min, max);
  return value;
}

}  // namespace

kj::StringPtr nameOf(Decision decision) {
  switch (decision) {
    case Decision::ALLOW:
      return "allow";
    case Decision::REVIEW:
      return "review";
    case Decision::DENY:
      return "deny";
  }
  KJ_UNREACHABLE;
}

bool isSafeToken(kj::StringPtr token) {
  if (token.size() <= 4 || token.size() > MAX_TOKEN_BYTES || !token.startsWith("tok_")) {
    return false;
  }
  size_t run = 0;
  for (char c : token) {
    bool digit = c >= '0' && c <= '9';
    bool ok = digit || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '-';
    if (!ok) return false;
    run = digit ? run + 1 : 0;
    if (run >= 12) return false;
  }
  return true;
}

Settings Settings::fromConfig(const Config& config) {
  Settings settings;
  settings.card.limit = static_cast<uint32_t>(
      integerIn(config, "velocity.card_limit", settings.card.limit, 1, MAX_LIMIT));
  settings.card.length =
      integerIn(config, "velocity.card_window_s", 60, 1, MAX_WINDOW_S) * kj::SECONDS;
  settings.merchant.limit = static_cast<uint32_t>(
      integerIn(config, "velocity.merchant_limit", settings.merchant.limit, 1, MAX_LIMIT));
  settings.merchant.length =
      integerIn(config, "velocity.merchant_window_s", 60, 1, MAX_WINDOW_S) * kj::SECONDS;

  auto limits = config.section("amount_limits");
  for (auto& currency : limits.keys()) {
    KJ_REQUIRE(findCurrency(currency) != nullptr,
               "fraud-screen: amount_limits keys are ISO 4217 codes", currency);
    auto limit =
        KJ_REQUIRE_NONNULL(limits.tryInteger(currency),
                           "fraud-screen: an amount limit is an integer of minor units", currency);
    KJ_REQUIRE(limit > 0, "fraud-screen: an amount limit must be positive", currency);
    settings.amountLimits.insert(kj::heapString(currency), limit);
  }

  auto score = [&](kj::StringPtr key, uint32_t defaultValue) {
    return static_cast<uint32_t>(integerIn(config, key, defaultValue, 0, MAX_SCORE));
  };
  settings.velocityCardScore = score("scores.velocity_card", settings.velocityCardScore);
  settings.velocityMerchantScore =
      score("scores.velocity_merchant", settings.velocityMerchantScore);
  settings.amountLimitScore = score("scores.amount_limit", settings.amountLimitScore);
  settings.countryMismatchScore = score("scores.country_mismatch", settings.countryMismatchScore);
  settings.reviewScore = score("review_score", settings.reviewScore);
  settings.denyScore = score("deny_score", settings.denyScore);
  KJ_REQUIRE(settings.reviewScore >= 1 && settings.reviewScore <= settings.denyScore,
             "fraud-screen: need 1 <= review_score <= deny_score", settings.reviewScore,
             settings.denyScore);
  settings.sweepThreshold = static_cast<size_t>(integerIn(
      config, "sweep_threshold", static_cast<int64_t>(settings.sweepThreshold), 1, 100'000'000));
  return settings;
}

namespace {

kj::Own<const SharedVelocity> joinVelocity(const Settings& settings) {
  Velocity::Options options{.card = settings.card,
                            .merchant = settings.merchant,
                            .sweepThreshold = settings.sweepThreshold};
  // Called only when no live `Velocity` has these options.
  return SharedVelocity::join(options, [&]() { return Velocity(options); });
}

}  // namespace

Velocity::Velocity(const Options& options)
    : options_(options), nextSweepAt(options.sweepThreshold) {}

Velocity::Counts Velocity::count(kj::StringPtr cardToken, kj::StringPtr merchantId, kj::Date now) {
  if (trackedKeys() >= nextSweepAt) sweep(now);
  return Counts{.card = count(cards, cardToken, options_.card, now),
                .merchant = count(merchants, merchantId, options_.merchant, now)};
}

size_t Velocity::count(Attempts& attempts, kj::StringPtr key, const Window& window, kj::Date now) {
  auto& times = attempts.findOrCreate(key, [&]() {
    return Attempts::Entry{kj::heapString(key), std::deque<kj::Date>()};
  });
  while (!times.empty() && now - times.front() >= window.length)
    times.pop_front();
  times.push_back(now);
  // Only "more than the limit" matters: older entries beyond limit + 1 can be dropped.
  while (times.size() > size_t{window.limit} + 1)
    times.pop_front();
  return times.size();
}

void Velocity::sweep(kj::Date now) {
  auto stale = [&](Attempts& attempts, const Window& window) {
    kj::Vector<kj::String> gone;
    for (auto& entry : attempts) {
      if (entry.value.empty() || now - entry.value.back() >= window.length) {
        gone.add(kj::heapString(entry.key));
      }
    }
    for (auto& key : gone)
      attempts.erase(key);
  };
  stale(cards, options_.card);
  stale(merchants, options_.merchant);
  // Sweep again when the live keys have doubled: amortised O(1) per screen.
  nextSweepAt = std::max(options_.sweepThreshold, 2 * trackedKeys());
}

Screen::Screen(Settings settings)
    : settings(kj::mv(settings)), velocity_(joinVelocity(this->settings)) {}

size_t Screen::trackedKeys() const {
  return velocity_->with([](Velocity& velocity) { return velocity.trackedKeys(); });
}

kj::OneOf<Verdict, Refusal> Screen::screen(const ScreenRequest& request, kj::Date now) {
  if (!isPrintableId(request.merchantId)) {
    return Refusal{"merchantId must be 1 to 255 printable characters without spaces"};
  }
  KJ_IF_MAYBE (error, checkCharge(request.amount, request.currency)) {
    return Refusal{moneyErrorMessage(*error)};
  }
  // Checked before the token is used anywhere: a card number is answered without being echoed.
  if (looksLikeCardNumber(request.cardToken)) {
    return Refusal{"cardToken looks like a card number: send a vault token (tok_...)"};
  }
  if (!isSafeToken(request.cardToken)) {
    return Refusal{"cardToken must be a vault token: tok_ followed by letters, digits, '_' or '-'"};
  }
  if (!isCountry(request.cardCountry) || !isCountry(request.ipCountry) ||
      !isCountry(request.merchantCountry)) {
    return Refusal{"countries are two upper-case letters (ISO 3166-1 alpha-2) or empty"};
  }

  // Only the counting is done under the shared lock; the rest is this shard's own.
  auto counts = velocity_->run(now, [&](Velocity& velocity, kj::Date at) {
    return velocity.count(request.cardToken, request.merchantId, at);
  });

  Verdict verdict;
  if (counts.card > settings.card.limit) {
    verdict.rules.add(
        FiredRule{"velocity.card", settings.velocityCardScore,
                  kj::str("more than ", settings.card.limit, " attempts with this card in ",
                          settings.card.length / kj::SECONDS, "s")});
  }
  if (counts.merchant > settings.merchant.limit) {
    verdict.rules.add(
        FiredRule{"velocity.merchant", settings.velocityMerchantScore,
                  kj::str("more than ", settings.merchant.limit, " attempts at this merchant in ",
                          settings.merchant.length / kj::SECONDS, "s")});
  }
  KJ_IF_MAYBE (limit, settings.amountLimits.find(request.currency)) {
    if (request.amount > *limit) {
      verdict.rules.add(FiredRule{
          "amount.limit", settings.amountLimitScore,
          kj::str("amount ", request.amount, " ", request.currency, " above the limit ", *limit)});
    }
  }
  // Countries are compared only where both are known.
  kj::Vector<kj::String> mismatches;
  auto differ = [](kj::StringPtr a, kj::StringPtr b) {
    return a.size() > 0 && b.size() > 0 && a != b;
  };
  if (differ(request.cardCountry, request.ipCountry)) {
    mismatches.add(kj::str("card ", request.cardCountry, " vs ip ", request.ipCountry));
  }
  if (differ(request.cardCountry, request.merchantCountry)) {
    mismatches.add(kj::str("card ", request.cardCountry, " vs merchant ", request.merchantCountry));
  }
  if (mismatches.size() > 0) {
    verdict.rules.add(FiredRule{"country.mismatch", settings.countryMismatchScore,
                                kj::strArray(mismatches, ", ")});
  }

  uint32_t total = 0;
  for (auto& rule : verdict.rules)
    total += rule.score;
  verdict.score = std::min(total, MAX_SCORE);
  verdict.decision = verdict.score >= settings.denyScore     ? Decision::DENY
                     : verdict.score >= settings.reviewScore ? Decision::REVIEW
                                                             : Decision::ALLOW;
  return kj::mv(verdict);
}

}  // namespace payhost::plugins::fraud
