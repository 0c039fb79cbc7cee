// TestHost, with the echo fixture compiled into this executable (its PAYHOST_PLUGIN defines
// payhostPluginDescriptor()) and two more plugins described by hand below.
#include <payhost/compat.h>
#include <payhost/fingerprint.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <kj/debug.h>
#include <kj/exception.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

namespace payhost::testing {
namespace {

using schema::FraudDecision;
using schema::FraudScreen;

std::string toStd(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
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

capnp::RemotePromise<FraudScreen::ScreenResults> screen(FraudScreen::Client& client, int64_t amount,
                                                        kj::StringPtr token) {
  auto request = client.screenRequest();
  auto params = request.initRequest();
  params.setMerchantId("m-1");
  params.getAmount().setMinorUnits(amount);
  params.getAmount().setCurrency("EUR");
  params.setCardToken(token);
  return request.send();
}

const payhost_plugin_v1_descriptor& echo() {
  return *payhostPluginDescriptor();
}

TEST(TestHost, CallsThePluginsService) {
  TestHost host(echo());
  auto client = host.service<FraudScreen>("test.echo");

  auto response = screen(client, 1234, "tok_1").wait(host.waitScope());
  auto verdict = response.getVerdict();
  EXPECT_EQ(verdict.getDecision(), FraudDecision::ALLOW);
  EXPECT_EQ(verdict.getScore(), 1234u);
  ASSERT_EQ(verdict.getFiredRules().size(), 2u);
  EXPECT_EQ(toStd(verdict.getFiredRules()[0]), "tok_1");
  EXPECT_EQ(toStd(verdict.getFiredRules()[1]), "echo");
}

TEST(TestHost, GivesThePluginItsConfig) {
  TestHost host(echo(), "label = \"v2\"");
  auto client = host.service<FraudScreen>("test.echo");

  auto response = screen(client, 1, "tok").wait(host.waitScope());
  EXPECT_EQ(toStd(response.getVerdict().getFiredRules()[1]), "v2");
}

TEST(TestHost, DelayedAnswerArrivesOnlyWhenTimeIsAdvanced) {
  TestHost host(echo(), "delay_ms = 50");
  auto client = host.service<FraudScreen>("test.echo");

  auto promise = screen(client, 77, "tok");
  EXPECT_FALSE(promise.poll(host.waitScope()));
  host.advanceTime(49 * kj::MILLISECONDS);
  EXPECT_FALSE(promise.poll(host.waitScope()));
  host.advanceTime(1 * kj::MILLISECONDS);
  ASSERT_TRUE(promise.poll(host.waitScope()));
  EXPECT_EQ(promise.wait(host.waitScope()).getVerdict().getScore(), 77u);
}

TEST(TestHost, AdvanceTimeCoversACallSentJustBefore) {
  TestHost host(echo(), "delay_ms = 50");
  auto client = host.service<FraudScreen>("test.echo");

  // Sent, but not yet delivered to the plugin (nothing has run the event loop).
  auto promise = screen(client, 78, "tok");
  host.advanceTime(50 * kj::MILLISECONDS);
  ASSERT_TRUE(promise.poll(host.waitScope()));
  EXPECT_EQ(promise.wait(host.waitScope()).getVerdict().getScore(), 78u);
}

TEST(TestHost, ThrowTokenFailsOnlyThatCall) {
  TestHost host(echo(), "throw_token = \"tok_bad\"");
  auto client = host.service<FraudScreen>("test.echo");

  auto message = errorFrom([&]() { screen(client, 1, "tok_bad").wait(host.waitScope()); });
  EXPECT_TRUE(contains(message, "echo plugin was asked to fail this call")) << message;

  EXPECT_EQ(screen(client, 2, "tok_good").wait(host.waitScope()).getVerdict().getScore(), 2u);
  EXPECT_ANY_THROW(screen(client, 3, "tok_bad").wait(host.waitScope()));
}

TEST(TestHost, LiveObjectsCountsServedObjectsAndCallsInFlight) {
  {
    TestHost host(echo(), "delay_ms = 10");
    EXPECT_EQ(host.liveObjects(), 1u);  // the plugin instance
    auto client = host.service<FraudScreen>("test.echo");
    EXPECT_EQ(host.liveObjects(), 2u);  // and the server made by serve()

    auto first = screen(client, 1, "tok");
    auto second = screen(client, 2, "tok");
    EXPECT_FALSE(first.poll(host.waitScope()));
    EXPECT_EQ(host.liveObjects(), 4u);  // and two calls in flight

    host.advanceTime(10 * kj::MILLISECONDS);
    first.wait(host.waitScope());
    second.wait(host.waitScope());
    EXPECT_EQ(host.liveObjects(), 2u);
  }
  // The host destroyed everything the plugin made.
  EXPECT_EQ(echo().live_objects(), 0u);
}

TEST(TestHost, CancelledCallIsNoLongerCounted) {
  TestHost host(echo(), "delay_ms = 10");
  auto client = host.service<FraudScreen>("test.echo");
  {
    auto promise = screen(client, 1, "tok");
    EXPECT_FALSE(promise.poll(host.waitScope()));
    EXPECT_EQ(host.liveObjects(), 3u);
  }
  host.waitScope().poll();
  EXPECT_EQ(host.liveObjects(), 2u);
}

TEST(TestHost, CapturesLogRecords) {
  TestHost host(echo());
  auto logs = host.logs();
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_EQ(logs[0].level, LogLevel::INFO);
  EXPECT_EQ(toStd(logs[0].event), "echo.started");
  EXPECT_EQ(toStd(logs[0].line), "echo.started");
}

TEST(TestHost, UnknownServiceThrowsNamingIt) {
  TestHost host(echo());
  auto message = errorFrom([&]() { host.serviceCapability("test.nope"); });
  EXPECT_TRUE(contains(message, "test.nope")) << message;
  EXPECT_TRUE(contains(message, "does not provide")) << message;
}

TEST(TestHost, RefusesAnIncompatibleDescriptor) {
  auto descriptor = echo();
  descriptor.abi_major = 99;
  auto message = errorFrom([&]() { TestHost host(descriptor); });
  EXPECT_TRUE(contains(message, "SDK ABI mismatch")) << message;
}

TEST(TestHost, ConfigSyntaxErrorNamesTheTestConfig) {
  auto message = errorFrom([&]() { TestHost host(echo(), "delay_ms = = 5"); });
  EXPECT_TRUE(contains(message, "<test config>:1:")) << message;
}

// --------------------------------------------------------------------------------------------
// Plugins described by hand (this executable's PAYHOST_PLUGIN is the echo fixture's).

template <typename PluginType>
payhost_plugin_v1_descriptor describe(const char* name, const payhost_service_v1* services) {
  return payhost_plugin_v1_descriptor{
      sizeof(payhost_plugin_v1_descriptor),
      PAYHOST_ABI_MAJOR,
      PAYHOST_ABI_MINOR,
      PAYHOST_BUILD_FINGERPRINT,
      name,
      "1.0.0",
      services,
      1,
      &_::createInstance<PluginType>,
      &_::destroyInstance,
      &_::countLiveObjects,
  };
}

// Answers each screen call by asking "test.upstream" through its Context, and adds a rule.
class RelayScreen final : public FraudScreen::Server {
public:
  explicit RelayScreen(Context& context)
      : upstream(context.service<FraudScreen>("test.upstream")) {}

protected:
  kj::Promise<void> screen(ScreenContext call) override {
    auto request = upstream.screenRequest();
    request.setRequest(call.getParams().getRequest());
    return request.send().then([call](capnp::Response<ScreenResults> response) mutable {
      auto upstreamVerdict = response.getVerdict();
      auto verdict = call.getResults().initVerdict();
      verdict.setDecision(upstreamVerdict.getDecision());
      verdict.setScore(upstreamVerdict.getScore() + 1);
    });
  }

private:
  FraudScreen::Client upstream;
};

class RelayPlugin final : public Plugin {
public:
  explicit RelayPlugin(Context& context) : context(context) {}
  capnp::Capability::Client service(kj::StringPtr name) override {
    return serve<RelayScreen>(context);
  }

private:
  Context& context;
};

const payhost_service_v1 RELAY_SERVICES[] = {PAYHOST_SERVICE("test.relay", FraudScreen)};

// What a test provides as "test.upstream": denies everything with a fixed score.
class DenyingScreen final : public FraudScreen::Server {
protected:
  kj::Promise<void> screen(ScreenContext call) override {
    auto verdict = call.getResults().initVerdict();
    verdict.setDecision(FraudDecision::DENY);
    verdict.setScore(900);
    return kj::READY_NOW;
  }
};

TEST(TestHost, ProvideLetsThePluginReachAnotherService) {
  auto relay = describe<RelayPlugin>("relay", RELAY_SERVICES);
  TestHost host(relay);
  host.provide("test.upstream", kj::heap<DenyingScreen>());
  auto client = host.service<FraudScreen>("test.relay");

  auto response = screen(client, 5, "tok").wait(host.waitScope());
  auto verdict = response.getVerdict();
  EXPECT_EQ(verdict.getDecision(), FraudDecision::DENY);
  EXPECT_EQ(verdict.getScore(), 901u);
}

TEST(TestHost, ProvideWorksAfterThePluginLookedTheServiceUp) {
  auto relay = describe<RelayPlugin>("relay", RELAY_SERVICES);
  TestHost host(relay);
  // The relay's server asks its Context for "test.upstream" when it is made, i.e. now.
  auto client = host.service<FraudScreen>("test.relay");

  auto message = errorFrom([&]() { screen(client, 5, "tok").wait(host.waitScope()); });
  EXPECT_TRUE(contains(message, "test.upstream")) << message;

  host.provide("test.upstream", kj::heap<DenyingScreen>());
  EXPECT_EQ(screen(client, 5, "tok").wait(host.waitScope()).getVerdict().getScore(), 901u);
}

TEST(TestHost, ProvidedServiceIsReachableFromTheTest) {
  TestHost host(echo());
  host.provide("test.upstream", kj::heap<DenyingScreen>());
  auto client = host.service<FraudScreen>("test.upstream");
  EXPECT_EQ(screen(client, 5, "tok").wait(host.waitScope()).getVerdict().getScore(), 900u);
}

class ThrowingPlugin final : public Plugin {
public:
  explicit ThrowingPlugin(Context&) { KJ_FAIL_REQUIRE("issuer simulator unreachable"); }
  capnp::Capability::Client service(kj::StringPtr) override { KJ_UNREACHABLE; }
};

const payhost_service_v1 THROWING_SERVICES[] = {PAYHOST_SERVICE("test.throwing", FraudScreen)};

TEST(TestHost, ReportsWhatThePluginsConstructorThrew) {
  auto throwing = describe<ThrowingPlugin>("throwing", THROWING_SERVICES);
  auto message = errorFrom([&]() { TestHost host(throwing); });
  EXPECT_TRUE(contains(message, "issuer simulator unreachable")) << message;
  EXPECT_EQ(throwing.live_objects(), 0u);
}

class NeverReadyPlugin final : public Plugin {
public:
  explicit NeverReadyPlugin(Context&) {}
  capnp::Capability::Client service(kj::StringPtr) override { KJ_UNREACHABLE; }
  kj::Promise<void> ready() override { return KJ_EXCEPTION(FAILED, "warm-up failed: no keys"); }
};

const payhost_service_v1 NEVER_READY_SERVICES[] = {
    PAYHOST_SERVICE("test.never-ready", FraudScreen)};

TEST(TestHost, RefusesAPluginThatIsNotReadyAndDestroysIt) {
  auto neverReady = describe<NeverReadyPlugin>("never-ready", NEVER_READY_SERVICES);
  auto message = errorFrom([&]() { TestHost host(neverReady); });
  EXPECT_TRUE(contains(message, "warm-up failed: no keys")) << message;
  // The instance was made, so the host must destroy it even though construction failed.
  EXPECT_EQ(neverReady.live_objects(), 0u);
}

}  // namespace
}  // namespace payhost::testing

namespace payhost::testing {
namespace {

TEST(TestHostSqlite, GivesThePluginARealSqliteDatabaseWithTheHostsRules) {
  std::string directory;
  {
    TestHost host(echo());
    auto& db = host.sqliteDatabase("ledger");
    EXPECT_EQ(&db, &host.sqliteDatabase("ledger"));
    EXPECT_EQ(db.name(), "ledger");
    EXPECT_TRUE(db.dialect() == SqlDialect::SQLITE);
    auto& ws = host.waitScope();
    EXPECT_EQ(db.execute("PRAGMA journal_mode").wait(ws).text(0, 0), "wal");
    EXPECT_EQ(db.execute("PRAGMA synchronous").wait(ws).integer(0, 0), 2);
    auto file = db.execute("PRAGMA database_list").wait(ws);
    directory = std::string(file.text(0, 2).cStr());
    EXPECT_NE(directory.find("payhost-testhost-"), std::string::npos) << directory;
    db.execute(
          "CREATE TABLE payments (id INTEGER PRIMARY KEY, merchant TEXT, amount BIGINT, "
          "rate REAL, raw BLOB)")
        .wait(ws);
    kj::byte raw[] = {0, 1, 2};
    auto inserted = db.execute(
                          "INSERT INTO payments (merchant, amount, rate, raw) "
                          "VALUES ($1, $2, $3, $4)",
                          {"m-1", int64_t{1250}, 0.5, kj::ArrayPtr<const kj::byte>(raw)})
                        .wait(ws);
    EXPECT_EQ(inserted.changes(), 1u);
    auto row = db.execute("SELECT merchant, amount, rate, raw FROM payments WHERE amount = $1",
                          {int64_t{1250}})
                   .wait(ws);
    ASSERT_EQ(row.rowCount(), 1u);
    EXPECT_EQ(row.text(0, 0), "m-1");
    EXPECT_EQ(row.integer(0, 1), 1250);
    EXPECT_EQ(row.real(0, 2), 0.5);
    EXPECT_EQ(row.blob(0, 3).size(), 3u);

    // A throw rolls the whole transaction back.
    auto failed = db.transaction([](SqlTransaction& tx) {
                      tx.execute("INSERT INTO payments (merchant, amount) VALUES ($1, $2)",
                                 {"m-2", int64_t{1}});
                      KJ_FAIL_REQUIRE("declined by the test");
                    })
                      .then([]() { return false; }, [](kj::Exception&&) { return true; })
                      .wait(ws);
    EXPECT_TRUE(failed);
    EXPECT_EQ(db.execute("SELECT count(*) FROM payments").wait(ws).integer(0, 0), 1);

    // Parameters are $1..$N and must all be given, as in payhostd.
    auto error = db.execute("SELECT $2", {int64_t{1}})
                     .then([](SqlResult&&) { return kj::str("no error"); },
                           [](kj::Exception&& e) { return kj::str(e.getDescription()); })
                     .wait(ws);
    EXPECT_NE(std::string(error.cStr()).find("parameter $2 has no value"), std::string::npos)
        << error.cStr();
    EXPECT_TRUE(std::filesystem::exists(directory));
  }
  // Cleaned up with the test host.
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(directory).parent_path()));
}

}  // namespace
}  // namespace payhost::testing
