// The fraud screen's rules in plain C++/KJ (no Cap'n Proto), so they test on their own:
// velocity per card token and per merchant over sliding windows, amount limits per currency, and
// country mismatch. Each rule that fires adds its score; the total decides allow, review or deny.
//
// Requests are views that must outlive the call only; verdicts own their strings. Time is passed
// in (`Context::clock().now()` in the plugin, a manual clock in tests). A `Screen` is
// shard-local; the velocity windows it counts in are shared by every `Screen` with the same
// windows in this copy of the library (all shards of one plugin version), through the SDK's
// `payhost::SharedState`, so a limit holds across shards.

#ifndef PAYHOST_PLUGINS_FRAUD_SCREEN_RULES_H_
#define PAYHOST_PLUGINS_FRAUD_SCREEN_RULES_H_

#include <payhost/config.h>
#include <payhost/shared-state.h>

#include <kj/array.h>
#include <kj/map.h>
#include <kj/one-of.h>
#include <kj/string.h>
#include <kj/time.h>
#include <kj/vector.h>

#include <cstdint>
#include <deque>

namespace payhost::plugins::fraud {

struct ScreenRequest {
  kj::StringPtr merchantId = "";
  int64_t amount = 0;  // minor units of `currency`
  kj::StringPtr currency = "";
  kj::StringPtr cardToken = "";
  kj::StringPtr cardCountry = "";      // ISO 3166-1 alpha-2 or empty when unknown
  kj::StringPtr ipCountry = "";        // likewise
  kj::StringPtr merchantCountry = "";  // likewise
};

enum class Decision { ALLOW, REVIEW, DENY };
kj::StringPtr nameOf(Decision decision);

struct FiredRule {
  kj::StringPtr name;  // static: "velocity.card", ...
  uint32_t score;
  kj::String detail;  // never card data
};

struct Verdict {
  Decision decision = Decision::ALLOW;
  uint32_t score = 0;  // 0 to 1000
  kj::Vector<FiredRule> rules;
};

// What a request was refused for; it was not counted.
struct Refusal {
  kj::StringPtr message;
};

struct Window {
  uint32_t limit;  // attempts allowed inside the window (the attempt being screened included)
  kj::Duration length;
  bool operator==(const Window& other) const = default;
};

struct Settings {
  Window card{5, 60 * kj::SECONDS};
  Window merchant{1000, 60 * kj::SECONDS};
  // Per currency: amounts above the limit (minor units) fire `amount.limit`.
  kj::HashMap<kj::String, int64_t> amountLimits;
  uint32_t velocityCardScore = 400;
  uint32_t velocityMerchantScore = 300;
  uint32_t amountLimitScore = 500;
  uint32_t countryMismatchScore = 200;
  uint32_t reviewScore = 300;  // a total at or above it is `review`
  uint32_t denyScore = 700;    // a total at or above it is `deny`
  // Distinct card tokens and merchants tracked before stale ones are swept.
  size_t sweepThreshold = 100'000;

  // Reads `[plugin.config]` (README.md has the keys); throws naming a key that is wrong.
  static Settings fromConfig(const Config& config);
};

// The sliding windows: attempt times per card token and per merchant. Not thread-safe on its
// own: the shards share one through `SharedVelocity`, which locks it.
class Velocity final {
public:
  // What selects the windows; `Screen`s with equal options share one `Velocity`.
  struct Options {
    Window card;
    Window merchant;
    size_t sweepThreshold;
    bool operator==(const Options& other) const = default;
  };
  struct Counts {
    size_t card;      // attempts with this card inside its window, this one included
    size_t merchant;  // likewise at this merchant
  };

  explicit Velocity(const Options& options);
  KJ_DISALLOW_COPY(Velocity);

  // Records an attempt by this card at this merchant at `now` and counts the windows. Only
  // "more than the limit" matters: the counts stop at `limit + 1`.
  Counts count(kj::StringPtr cardToken, kj::StringPtr merchantId, kj::Date now);

  // Keys tracked now (card tokens plus merchants): for tests of the sweep.
  size_t trackedKeys() const { return cards.size() + merchants.size(); }

private:
  // Attempt times per key, oldest first; at most `limit + 1` are kept (enough to tell "over").
  using Attempts = kj::HashMap<kj::String, std::deque<kj::Date>>;

  // Records an attempt by `key` at `now` and returns the attempts inside the window.
  size_t count(Attempts& attempts, kj::StringPtr key, const Window& window, kj::Date now);
  void sweep(kj::Date now);

  Options options_;
  Attempts cards;
  Attempts merchants;
  size_t nextSweepAt;
};

// One `Velocity` for every instance with the same windows in this copy of the library. Its time
// never runs backwards (`SharedState::run`), so attempts stay in order across shards whose
// clocks read a little apart.
using SharedVelocity = SharedState<Velocity::Options, Velocity>;

class Screen final {
public:
  // Joins the shared windows of these settings (a new, empty `Velocity` if none is alive).
  explicit Screen(Settings settings);
  KJ_DISALLOW_COPY(Screen);

  // Checks the request, counts it in the shared windows and applies every rule. A request that
  // is not valid is refused (and not counted).
  kj::OneOf<Verdict, Refusal> screen(const ScreenRequest& request, kj::Date now);

  // Keys tracked now in the shared windows: for tests.
  size_t trackedKeys() const;

  // The shared windows it joined: for tests.
  const SharedVelocity& velocity() const { return *velocity_; }

private:
  Settings settings;
  kj::Own<const SharedVelocity> velocity_;
};

// Whether `token` is a well-formed vault token (`tok_` then 1-124 of [A-Za-z0-9_-]) without a
// run of 12 digits: the only kind that may be logged or used as a key.
bool isSafeToken(kj::StringPtr token);

}  // namespace payhost::plugins::fraud

#endif  // PAYHOST_PLUGINS_FRAUD_SCREEN_RULES_H_
