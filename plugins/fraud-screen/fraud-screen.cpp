// The fraud-screen plugin: the rules of rules.h behind `payhost::schema::FraudScreen`, served as
// `payments.fraud`. This file is only the glue: config, request and verdict conversion, one log
// record per screen. README.md beside this file has the rules and config keys.

#include <payhost/context.h>
#include <payhost/log.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>

#include <kj/debug.h>
#include <kj/refcount.h>

#include "rules.h"

namespace payhost::plugins::fraud {
namespace {

namespace schema = payhost::schema;

constexpr kj::StringPtr SERVICE_NAME = "payments.fraud"_kj;

schema::FraudDecision toSchema(Decision decision) {
  switch (decision) {
    case Decision::ALLOW:
      return schema::FraudDecision::ALLOW;
    case Decision::REVIEW:
      return schema::FraudDecision::REVIEW;
    case Decision::DENY:
      return schema::FraudDecision::DENY;
  }
  KJ_UNREACHABLE;
}

// The screen and the context of one plugin instance (one shard); the screen's velocity windows
// are shared with the other shards (rules.h). The host promises the context outlives the
// instance, not the servers, so the instance detaches on destruction. Shard-local.
class Shard final : public kj::Refcounted {
public:
  explicit Shard(Context& context)
      : screen(Settings::fromConfig(context.config())), context_(context) {}

  Context& context() {
    KJ_IF_MAYBE (borrowed, context_) {
      return *borrowed;
    }
    kj::throwFatalException(
        KJ_EXCEPTION(DISCONNECTED, "the fraud-screen instance has been shut down"));
  }
  void detach() { context_ = nullptr; }

  Screen screen;

private:
  kj::Maybe<Context&> context_;
};

class FraudServer final : public schema::FraudScreen::Server {
public:
  explicit FraudServer(kj::Own<Shard> shard) : shard(kj::mv(shard)) {}

  kj::Promise<void> screen(ScreenContext call) override {
    auto& context = shard->context();
    auto request = call.getParams().getRequest();
    auto amount = request.getAmount();
    ScreenRequest plain{
        .merchantId = request.getMerchantId(),
        .amount = amount.getMinorUnits(),
        .currency = amount.getCurrency(),
        .cardToken = request.getCardToken(),
        .cardCountry = request.getCardCountry(),
        .ipCountry = request.getIpCountry(),
        .merchantCountry = request.getMerchantCountry(),
    };
    auto outcome = shard->screen.screen(plain, context.clock().now());
    auto out = call.getResults().initVerdict();
    auto& log = context.log();
    KJ_SWITCH_ONEOF(outcome) {
      KJ_CASE_ONEOF(verdict, Verdict) {
        out.setDecision(toSchema(verdict.decision));
        out.setScore(verdict.score);
        auto names = out.initFiredRules(verdict.rules.size());
        auto rules = out.initRules(verdict.rules.size());
        kj::Vector<kj::StringPtr> fired;
        for (auto i : kj::indices(verdict.rules)) {
          auto& rule = verdict.rules[i];
          names.set(i, rule.name);
          rules[i].setName(rule.name);
          rules[i].setScore(rule.score);
          rules[i].setDetail(rule.detail);
          fired.add(rule.name);
        }
        if (log.enabled(LogLevel::INFO)) {
          auto amountText = kj::str(plain.amount);
          auto scoreText = kj::str(verdict.score);
          auto rulesText = kj::strArray(fired, ",");
          const LogField fields[] = {
              {"merchant", plain.merchantId},
              {"token", plain.cardToken},
              {"amount", amountText},
              {"currency", plain.currency},
              {"decision", nameOf(verdict.decision)},
              {"score", scoreText},
              {"rules", rulesText},
          };
          log.write(LogLevel::INFO, "fraud.screen", fields);
        }
      }
      KJ_CASE_ONEOF(refusal, Refusal) {
        out.setDecision(schema::FraudDecision::REJECTED);
        auto rejection = out.initRejection();
        rejection.setCode(schema::RejectCode::INVALID_REQUEST);
        rejection.setMessage(refusal.message);
        // Only the fixed message: the request may hold anything, a card number included.
        log.info("fraud.screen", {{"decision", "rejected"}, {"reason", refusal.message}});
      }
    }
    return kj::READY_NOW;
  }

private:
  kj::Own<Shard> shard;
};

class FraudPlugin final : public Plugin {
public:
  explicit FraudPlugin(Context& context) : shard(kj::refcounted<Shard>(context)) {}
  ~FraudPlugin() noexcept(false) override { shard->detach(); }
  KJ_DISALLOW_COPY(FraudPlugin);

  capnp::Capability::Client service(kj::StringPtr name) override {
    KJ_REQUIRE(name == SERVICE_NAME, "fraud-screen provides only payments.fraud", name);
    return serve<FraudServer>(kj::addRef(*shard));
  }

private:
  kj::Own<Shard> shard;
};

}  // namespace
}  // namespace payhost::plugins::fraud

PAYHOST_PLUGIN(payhost::plugins::fraud::FraudPlugin, "fraud-screen", "1.0.0",
               PAYHOST_SERVICE("payments.fraud", payhost::schema::FraudScreen));
