#include <payhost/config.h>

#include <kj/debug.h>
#include <kj/exception.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace payhost {
namespace {

std::string toStd(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

Config parse(kj::StringPtr toml) {
  return Config::parse(toml, "<test>");
}

// The description of the exception `function` throws; fails the test when none is thrown.
template <typename Function>
std::string errorFrom(Function&& function) {
  KJ_IF_MAYBE (exception, kj::runCatchingExceptions(kj::fwd<Function>(function))) {
    return exception->getDescription().cStr();
  }
  ADD_FAILURE() << "no exception thrown";
  return "";
}

std::vector<std::string> keysOf(const Config& config) {
  std::vector<std::string> result;
  for (auto& key : config.keys())
    result.push_back(toStd(key));
  return result;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Config, EmptyConfigHasNoKeys) {
  Config config;
  EXPECT_EQ(config.tryString("anything"), nullptr);
  EXPECT_EQ(config.tryInteger("a.b"), nullptr);
  EXPECT_TRUE(keysOf(config).empty());
  EXPECT_EQ(config.integer("anything", 7), 7);
}

TEST(Config, TypedGettersReadTheirTypes) {
  auto config = parse(R"(
name = "card"
port = 8443
ratio = 0.25
enabled = true
)");
  EXPECT_EQ(toStd(config.string("name", "default")), "card");
  EXPECT_EQ(config.integer("port", 0), 8443);
  EXPECT_DOUBLE_EQ(config.number("ratio", 0), 0.25);
  EXPECT_TRUE(config.boolean("enabled", false));

  KJ_IF_MAYBE (name, config.tryString("name")) {
    EXPECT_EQ(toStd(*name), "card");
  } else {
    ADD_FAILURE() << "tryString(name) is null";
  }
  EXPECT_EQ(config.tryInteger("port").orDefault(0), 8443);
  EXPECT_DOUBLE_EQ(config.tryNumber("ratio").orDefault(0), 0.25);
  EXPECT_EQ(config.tryBoolean("enabled").orDefault(false), true);
}

TEST(Config, AbsentKeysGiveTheDefaultOrNull) {
  auto config = parse("present = 1");
  EXPECT_EQ(toStd(config.string("absent", "fallback")), "fallback");
  EXPECT_EQ(config.integer("absent", -5), -5);
  EXPECT_DOUBLE_EQ(config.number("absent", 1.5), 1.5);
  EXPECT_FALSE(config.boolean("absent", false));
  EXPECT_EQ(config.tryString("absent"), nullptr);
  EXPECT_EQ(config.tryInteger("absent"), nullptr);
  EXPECT_EQ(config.tryNumber("absent"), nullptr);
  EXPECT_EQ(config.tryBoolean("absent"), nullptr);
}

TEST(Config, NumberAcceptsAnInteger) {
  auto config = parse("timeout = 3");
  EXPECT_DOUBLE_EQ(config.number("timeout", 0), 3.0);
}

TEST(Config, WrongTypeNamesTheKeyAndBothTypes) {
  auto config = parse(R"(
port = "8443"
ratio = "high"
limits = { daily = 5 }
flag = 1
)");
  auto message = errorFrom([&]() { config.integer("port", 0); });
  EXPECT_TRUE(contains(message, "port")) << message;
  EXPECT_TRUE(contains(message, "integer")) << message;
  EXPECT_TRUE(contains(message, "string")) << message;

  message = errorFrom([&]() { config.number("ratio", 0); });
  EXPECT_TRUE(contains(message, "ratio")) << message;
  EXPECT_TRUE(contains(message, "number")) << message;
  EXPECT_TRUE(contains(message, "string")) << message;

  message = errorFrom([&]() { config.string("limits", ""); });
  EXPECT_TRUE(contains(message, "limits")) << message;
  EXPECT_TRUE(contains(message, "string")) << message;
  EXPECT_TRUE(contains(message, "table")) << message;

  message = errorFrom([&]() { config.tryBoolean("flag"); });
  EXPECT_TRUE(contains(message, "flag")) << message;
  EXPECT_TRUE(contains(message, "boolean")) << message;
  EXPECT_TRUE(contains(message, "integer")) << message;
}

TEST(Config, WrongTypeIsNotTakenForAbsent) {
  // A default must not hide a mistyped key.
  auto config = parse("delay_ms = \"50\"");
  EXPECT_ANY_THROW(config.integer("delay_ms", 0));
  EXPECT_ANY_THROW(config.tryInteger("delay_ms"));
}

TEST(Config, DottedKeysReachIntoTables) {
  auto config = parse(R"(
issuer.host = "sim.local"

[issuer.limits]
latency_ms = 40

[network]
retries = 2
)");
  EXPECT_EQ(toStd(config.string("issuer.host", "")), "sim.local");
  EXPECT_EQ(config.integer("issuer.limits.latency_ms", 0), 40);
  EXPECT_EQ(config.integer("network.retries", 0), 2);
  EXPECT_EQ(config.tryInteger("network.absent"), nullptr);
  EXPECT_EQ(config.tryInteger("absent.retries"), nullptr);
}

TEST(Config, SectionIsTheSubTable) {
  auto config = parse(R"(
[issuer]
host = "sim.local"
limits = { latency_ms = 40 }
)");
  auto issuer = config.section("issuer");
  EXPECT_EQ(toStd(issuer.string("host", "")), "sim.local");
  EXPECT_EQ(issuer.integer("limits.latency_ms", 0), 40);
  EXPECT_EQ(issuer.section("limits").integer("latency_ms", 0), 40);
  EXPECT_EQ(issuer.tryString("issuer.host"), nullptr);
}

TEST(Config, SectionOfAnAbsentKeyIsEmpty) {
  auto config = parse("a = 1");
  auto section = config.section("absent");
  EXPECT_TRUE(keysOf(section).empty());
  EXPECT_EQ(section.integer("a", 9), 9);
}

TEST(Config, SectionOfANonTableThrowsNamingTheKey) {
  auto config = parse("issuer = \"sim\"");
  auto message = errorFrom([&]() { config.section("issuer"); });
  EXPECT_TRUE(contains(message, "issuer")) << message;
  EXPECT_TRUE(contains(message, "table")) << message;
  EXPECT_TRUE(contains(message, "string")) << message;
}

TEST(Config, SectionOutlivesItsParent) {
  Config section;
  {
    auto config = parse("[issuer]\nhost = \"sim.local\"");
    section = config.section("issuer");
  }
  EXPECT_EQ(toStd(section.string("host", "")), "sim.local");
}

TEST(Config, KeysAreInFileOrder) {
  auto config = parse(R"(
zeta = 1
alpha = 2
mid.inner = 3

[beta]
x = 1

[aardvark]
y = 2
)");
  EXPECT_EQ(keysOf(config), (std::vector<std::string>{"zeta", "alpha", "mid", "beta", "aardvark"}));
  EXPECT_EQ(keysOf(config.section("beta")), std::vector<std::string>{"x"});
}

TEST(Config, ToTomlRoundTrips) {
  auto original = parse(R"(
name = "card \"processor\"\nline two"
port = 8443
ratio = 0.5
enabled = false
tags = ["a", "b"]
limits = { daily = 5, currency = "EUR", nested = { deep = true } }

[issuer]
host = "sim.local"
latency.ms = 40

[[routes]]
path = "/a"

[[routes]]
path = "/b"
)");
  auto text = original.toToml();
  auto copy = Config::parse(text, "<round trip>");

  EXPECT_EQ(toStd(copy.string("name", "")), "card \"processor\"\nline two");
  EXPECT_EQ(copy.integer("port", 0), 8443);
  EXPECT_DOUBLE_EQ(copy.number("ratio", 0), 0.5);
  EXPECT_FALSE(copy.boolean("enabled", true));
  EXPECT_EQ(copy.integer("limits.daily", 0), 5);
  EXPECT_EQ(toStd(copy.string("limits.currency", "")), "EUR");
  EXPECT_TRUE(copy.boolean("limits.nested.deep", false));
  EXPECT_EQ(toStd(copy.string("issuer.host", "")), "sim.local");
  EXPECT_EQ(copy.integer("issuer.latency.ms", 0), 40);
  EXPECT_EQ(toStd(copy.string("routes[1].path", "")), "/b");
  // Written the same way twice: nothing was lost or added by the round trip.
  EXPECT_EQ(toStd(copy.toToml()), toStd(text));
}

TEST(Config, InlineTableSectionRoundTripsAsADocument) {
  auto config = parse("card = { network = \"visa\", limits = { daily = 5 } }");
  auto card = config.section("card");
  auto text = card.toToml();

  auto copy = Config::parse(text, "<inline section>");
  EXPECT_EQ(toStd(copy.string("network", "")), "visa");
  EXPECT_EQ(copy.integer("limits.daily", 0), 5);
}

TEST(Config, SyntaxErrorNamesSourceLineAndColumn) {
  auto message = errorFrom([]() { Config::parse("a = 1\nb = = 2\n", "plugin.toml"); });
  EXPECT_TRUE(contains(message, "plugin.toml:2:5")) << message;
}

TEST(Config, DuplicateKeyIsASyntaxError) {
  auto message = errorFrom([]() { Config::parse("a = 1\n\na = 2\n", "dup.toml"); });
  EXPECT_TRUE(contains(message, "dup.toml:3:")) << message;
}

}  // namespace
}  // namespace payhost
