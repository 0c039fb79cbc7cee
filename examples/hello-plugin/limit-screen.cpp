// limit-screen: a small fraud screen, as a third party would write one.
//
// Service `payments.screen` (payhost::schema::FraudScreen): denies an amount above `max_amount`
// minor units, asks for review when the card's country differs from the IP's country, and
// allows the rest. Config (the [plugin.config] table in payhostd's config):
//   max_amount = 500000   # minor units
//   review_score = 600    # score given to a country mismatch
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>

namespace {

using payhost::schema::FraudDecision;
using payhost::schema::FraudScreen;

class LimitScreen final : public FraudScreen::Server {
public:
  explicit LimitScreen(payhost::Context& context)
      : context(context),
        maxAmount(context.config().integer("max_amount", 500000)),
        reviewScore(context.config().integer("review_score", 600)) {}

protected:
  kj::Promise<void> screen(ScreenContext call) override {
    auto request = call.getParams().getRequest();
    auto verdict = call.getResults().initVerdict();
    kj::Vector<kj::StringPtr> fired;
    uint32_t score = 0;
    if (request.getAmount().getMinorUnits() > maxAmount) {
      fired.add("amount-limit");
      score = 1000;
    }
    auto cardCountry = request.getCardCountry();
    auto ipCountry = request.getIpCountry();
    if (cardCountry.size() > 0 && ipCountry.size() > 0 && cardCountry != ipCountry) {
      fired.add("country-mismatch");
      score = kj::max(score, static_cast<uint32_t>(reviewScore));
    }
    verdict.setScore(score);
    verdict.setDecision(score >= 1000 ? FraudDecision::DENY
                        : score > 0   ? FraudDecision::REVIEW
                                      : FraudDecision::ALLOW);
    auto rules = verdict.initFiredRules(fired.size());
    for (size_t i = 0; i < fired.size(); ++i)
      rules.set(i, fired[i]);
    // The token is a vault token, never a card number, so it may be logged.
    context.log().info("screen.verdict", {{"merchant", request.getMerchantId()},
                                          {"token", request.getCardToken()},
                                          {"score", kj::str(score)}});
    return kj::READY_NOW;
  }

private:
  payhost::Context& context;
  int64_t maxAmount;
  int64_t reviewScore;
};

class LimitScreenPlugin final : public payhost::Plugin {
public:
  explicit LimitScreenPlugin(payhost::Context& context) : context(context) {
    KJ_REQUIRE(context.config().integer("max_amount", 500000) > 0, "max_amount must be positive");
  }
  capnp::Capability::Client service(kj::StringPtr name) override {
    return payhost::serve<LimitScreen>(context);
  }

private:
  payhost::Context& context;
};

}  // namespace

PAYHOST_PLUGIN(LimitScreenPlugin, "limit-screen", "1.0.0",
               PAYHOST_SERVICE("payments.screen", payhost::schema::FraudScreen));
