// The FX plugin: quotes from a configured rate table, held until they expire, and conversions at
// a quote's rate, in exact decimal arithmetic rounded half-even (rate.h). Serves
// `payhost::schema::Fx` as `payments.fx`. README.md beside this file has the config and rules.

#include <payhost/context.h>
#include <payhost/log.h>
#include <payhost/money.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>

#include <kj/debug.h>
#include <kj/map.h>
#include <kj/refcount.h>
#include <kj/vector.h>

#include <cstdint>
#include <deque>

#include "rate.h"

namespace payhost::plugins::fx {
namespace {

namespace schema = payhost::schema;

constexpr kj::StringPtr SERVICE_NAME = "payments.fx"_kj;
constexpr int64_t MAX_TTL_S = 24 * 3600;
constexpr int64_t MAX_QUOTES_LIMIT = 10'000'000;

struct Pair {
  const CurrencyInfo* source;
  const CurrencyInfo* target;
  Rate rate;
  kj::String rateText;
};

struct Quote {
  kj::String id;
  const CurrencyInfo* source;
  const CurrencyInfo* target;
  int64_t sourceMinor;
  int64_t targetMinor;
  Rate rate;
  kj::Date expiresAt;
};

// The rate table, read once from `[plugin.config.rates]`: keys "EUR_USD" = "1.0842" (units of
// USD per EUR). Throws, naming the key, on anything malformed.
kj::HashMap<kj::String, Pair> readRates(const Config& config) {
  kj::HashMap<kj::String, Pair> pairs;
  auto rates = config.section("rates");
  for (auto& key : rates.keys()) {
    KJ_REQUIRE(key.size() == 7 && key[3] == '_', "fx: rate keys are SOURCE_TARGET, e.g. EUR_USD",
               key);
    auto sourceCode = kj::heapString(key.slice(0, 3));
    auto targetCode = kj::heapString(key.slice(4));
    auto& source = KJ_REQUIRE_NONNULL(findCurrency(sourceCode),
                                      "fx: not an ISO 4217 currency with a minor unit", key);
    auto& target = KJ_REQUIRE_NONNULL(findCurrency(targetCode),
                                      "fx: not an ISO 4217 currency with a minor unit", key);
    KJ_REQUIRE(source.exponent <= 4 && target.exponent <= 4);
    auto text = KJ_REQUIRE_NONNULL(rates.tryString(key),
                                   "fx: a rate is a decimal string, e.g. \"1.0842\"", key);
    kj::StringPtr problem;
    auto rate = KJ_REQUIRE_NONNULL(tryParseRate(text, problem), "fx: bad rate", key, problem);
    pairs.insert(kj::heapString(key), Pair{&source, &target, rate, formatRate(rate)});
  }
  return pairs;
}

int64_t configInteger(const Config& config, kj::StringPtr key, int64_t defaultValue, int64_t min,
                      int64_t max) {
  int64_t value = config.integer(key, defaultValue);
  KJ_REQUIRE(value >= min && value <= max, "fx config value out of range", key, value, min, max);
  return value;
}

int64_t unixMs(kj::Date date) {
  return (date - kj::UNIX_EPOCH) / kj::MILLISECONDS;
}

void setRejected(schema::FxResult::Builder result, schema::RejectCode code, kj::StringPtr message) {
  auto out = result.initRejected();
  out.setCode(code);
  out.setMessage(message);
}

void setMoney(schema::Money::Builder out, int64_t minorUnits, const CurrencyInfo& currency) {
  out.setMinorUnits(minorUnits);
  out.setCurrency(currency.code);
}

void fillQuote(schema::FxQuote::Builder out, const Quote& quote, int64_t sourceMinor,
               int64_t targetMinor) {
  out.setQuoteId(quote.id);
  setMoney(out.initSource(), sourceMinor, *quote.source);
  setMoney(out.initTarget(), targetMinor, *quote.target);
  out.setRate(formatRate(quote.rate));
  out.setExpiresAtUnixMs(unixMs(quote.expiresAt));
}

// The quotes of one plugin instance (one shard), in memory. Quote ids name the shard, so a
// conversion must reach the shard that quoted. Shard-local.
class Desk final : public kj::Refcounted {
public:
  Desk(Context& context)
      : pairs(readRates(context.config())),
        ttl(configInteger(context.config(), "quote_ttl_s", 60, 1, MAX_TTL_S) * kj::SECONDS),
        maxQuotes(static_cast<size_t>(
            configInteger(context.config(), "max_quotes", 100'000, 1, MAX_QUOTES_LIMIT))),
        shardIndex(context.shardIndex()),
        context_(context) {}

  Context& context() {
    KJ_IF_MAYBE (borrowed, context_) {
      return *borrowed;
    }
    kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED, "the fx instance has been shut down"));
  }
  void detach() { context_ = nullptr; }

  void quote(schema::Money::Reader source, kj::StringPtr targetCode,
             schema::FxResult::Builder result) {
    auto now = context().clock().now();
    forgetExpired(now);
    auto sourceCode = source.getCurrency();
    KJ_IF_MAYBE (error, checkCharge(source.getMinorUnits(), sourceCode)) {
      auto code = *error == MoneyError::UNKNOWN_CURRENCY ? schema::RejectCode::UNSUPPORTED_CURRENCY
                                                         : schema::RejectCode::INVALID_REQUEST;
      return setRejected(result, code, moneyErrorMessage(*error));
    }
    if (findCurrency(targetCode) == nullptr) {
      return setRejected(result, schema::RejectCode::UNSUPPORTED_CURRENCY,
                         "target currency is not an ISO 4217 currency with a minor unit");
    }
    auto key = kj::str(sourceCode, "_", targetCode);
    auto* pair = pairs.find(key).map([](Pair& found) { return &found; }).orDefault(nullptr);
    if (pair == nullptr) {
      return setRejected(result, schema::RejectCode::UNSUPPORTED_CURRENCY,
                         kj::str("no rate from ", sourceCode, " to ", targetCode));
    }
    ConvertError error;
    KJ_IF_MAYBE (target, convert(source.getMinorUnits(), pair->source->exponent,
                                 pair->target->exponent, pair->rate, error)) {
      if (quotes.size() >= maxQuotes) {
        kj::throwFatalException(KJ_EXCEPTION(OVERLOADED, "fx: too many live quotes", maxQuotes));
      }
      Quote quote{kj::str("fxq_", shardIndex, "_", ++quoteCount),
                  pair->source,
                  pair->target,
                  source.getMinorUnits(),
                  *target,
                  pair->rate,
                  now + ttl};
      fillQuote(result.initQuote(), quote, quote.sourceMinor, quote.targetMinor);
      expiryOrder.push_back(kj::heapString(quote.id));
      auto id = kj::heapString(quote.id);
      quotes.insert(kj::mv(id), kj::mv(quote));
    } else {
      rejectConversion(result, error);
    }
  }

  void convertAt(kj::StringPtr quoteId, kj::Maybe<schema::Money::Reader> amount,
                 schema::FxResult::Builder result) {
    auto now = context().clock().now();
    auto* quote = quotes.find(quoteId).map([](Quote& found) { return &found; }).orDefault(nullptr);
    if (quote == nullptr) {
      // Expired quotes are forgotten after a while; until then they answer quoteExpired.
      return setRejected(result, schema::RejectCode::UNKNOWN_QUOTE,
                         "no such quote (never issued here, or long expired)");
    }
    if (now >= quote->expiresAt) {
      return setRejected(result, schema::RejectCode::QUOTE_EXPIRED,
                         "the quote has expired; ask for a new one");
    }
    int64_t sourceMinor = quote->sourceMinor;
    KJ_IF_MAYBE (given, amount) {
      if (given->getCurrency() != quote->source->code) {
        return setRejected(result, schema::RejectCode::CURRENCY_MISMATCH,
                           kj::str("the quote converts from ", quote->source->code));
      }
      sourceMinor = given->getMinorUnits();
    }
    ConvertError error;
    KJ_IF_MAYBE (target, convert(sourceMinor, quote->source->exponent, quote->target->exponent,
                                 quote->rate, error)) {
      fillQuote(result.initConverted(), *quote, sourceMinor, *target);
    } else {
      rejectConversion(result, error);
    }
  }

private:
  static void rejectConversion(schema::FxResult::Builder result, ConvertError error) {
    switch (error) {
      case ConvertError::NOT_POSITIVE:
        return setRejected(result, schema::RejectCode::INVALID_REQUEST, "amount must be positive");
      case ConvertError::OVERFLOW:
        return setRejected(result, schema::RejectCode::AMOUNT_OVERFLOW,
                           "the converted amount overflows a 64-bit count of minor units");
      case ConvertError::ZERO:
        return setRejected(result, schema::RejectCode::INVALID_REQUEST,
                           "the amount converts to zero minor units of the target currency");
    }
    KJ_UNREACHABLE;
  }

  // Quotes are kept one TTL past their expiry (so a late convert hears quoteExpired rather than
  // unknownQuote), then forgotten. Every quote lives equally long, so expiry order is creation
  // order.
  void forgetExpired(kj::Date now) {
    while (!expiryOrder.empty()) {
      auto& id = expiryOrder.front();
      KJ_IF_MAYBE (quote, quotes.find(id)) {
        if (now < quote->expiresAt + ttl) break;
        quotes.erase(id);
      }
      expiryOrder.pop_front();
    }
  }

  kj::HashMap<kj::String, Pair> pairs;
  const kj::Duration ttl;
  const size_t maxQuotes;
  const uint32_t shardIndex;
  uint64_t quoteCount = 0;
  kj::HashMap<kj::String, Quote> quotes;
  std::deque<kj::String> expiryOrder;
  kj::Maybe<Context&> context_;
};

kj::StringPtr outcomeOf(schema::FxResult::Reader result) {
  switch (result.which()) {
    case schema::FxResult::QUOTE:
      return "quoted";
    case schema::FxResult::CONVERTED:
      return "converted";
    case schema::FxResult::REJECTED:
      return "rejected";
    default:
      return "unspecified";
  }
}

class FxServer final : public schema::Fx::Server {
public:
  explicit FxServer(kj::Own<Desk> desk) : desk(kj::mv(desk)) {}

  kj::Promise<void> quote(QuoteContext call) override {
    auto params = call.getParams();
    auto result = call.getResults().initResult();
    desk->quote(params.getSource(), params.getTargetCurrency(), result);
    log("fx.quote", result.asReader());
    return kj::READY_NOW;
  }

  kj::Promise<void> convert(ConvertContext call) override {
    auto params = call.getParams();
    auto result = call.getResults().initResult();
    kj::Maybe<schema::Money::Reader> amount;
    if (params.hasAmount()) amount = params.getAmount();
    desk->convertAt(params.getQuoteId(), amount, result);
    log("fx.convert", result.asReader());
    return kj::READY_NOW;
  }

private:
  void log(kj::StringPtr event, schema::FxResult::Reader result) {
    auto& logger = desk->context().log();
    if (!logger.enabled(LogLevel::INFO)) return;
    kj::Vector<LogField> fields;
    fields.add(LogField{"outcome", outcomeOf(result)});
    kj::String source, target;
    schema::FxQuote::Reader quote;
    bool hasQuote = false;
    if (result.isQuote()) {
      quote = result.getQuote();
      hasQuote = true;
    } else if (result.isConverted()) {
      quote = result.getConverted();
      hasQuote = true;
    }
    if (hasQuote) {
      fields.add(LogField{"quote", quote.getQuoteId()});
      source = kj::str(quote.getSource().getMinorUnits(), " ", quote.getSource().getCurrency());
      target = kj::str(quote.getTarget().getMinorUnits(), " ", quote.getTarget().getCurrency());
      fields.add(LogField{"source", source});
      fields.add(LogField{"target", target});
      fields.add(LogField{"rate", quote.getRate()});
    } else if (result.isRejected()) {
      fields.add(LogField{"reason", result.getRejected().getMessage()});
    }
    logger.write(LogLevel::INFO, event, fields.asPtr());
  }

  kj::Own<Desk> desk;
};

class FxPlugin final : public Plugin {
public:
  explicit FxPlugin(Context& context) : desk(kj::refcounted<Desk>(context)) {}
  ~FxPlugin() noexcept(false) { desk->detach(); }
  KJ_DISALLOW_COPY(FxPlugin);

  capnp::Capability::Client service(kj::StringPtr name) override {
    KJ_REQUIRE(name == SERVICE_NAME, "fx provides only payments.fx", name);
    return serve<FxServer>(kj::addRef(*desk));
  }

private:
  kj::Own<Desk> desk;
};

}  // namespace
}  // namespace payhost::plugins::fx

PAYHOST_PLUGIN(payhost::plugins::fx::FxPlugin, "fx", "1.0.0",
               PAYHOST_SERVICE("payments.fx", payhost::schema::Fx));
