#include <payhost/compat.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <capnp/any.h>
#include <kj/debug.h>
#include <kj/timer.h>

#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "sdk/src/sql-connection.h"

namespace payhost::testing {

namespace {

// Forwards every call to whatever capability is bound to `name` when the call is made.
class LateBoundService final : public capnp::Capability::Server {
public:
  LateBoundService(TestHost::Impl& host, kj::String name) : host(host), name(kj::mv(name)) {}

  DispatchCallResult dispatchCall(
      uint64_t interfaceId, uint16_t methodId,
      capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override;

private:
  TestHost::Impl& host;
  kj::String name;
};

// A real SQLite database in a temporary directory, through the same connection as payhostd's
// SQLite pools: their settings, parameter rules, rows and error messages.
class SqliteTestDatabase final : public Database {
public:
  explicit SqliteTestDatabase(kj::StringPtr name)
      : name_(kj::heapString(name)),
        connection(name_, kj::str((dir.path / (std::string(name.cStr()) + ".sqlite")).c_str())) {}
  KJ_DISALLOW_COPY(SqliteTestDatabase);

  kj::StringPtr name() override { return name_; }
  SqlDialect dialect() override { return SqlDialect::SQLITE; }

  kj::Promise<void> transactionWork(kj::Function<void(SqlTransaction&)> work) override {
    KJ_IF_MAYBE (exception,
                 kj::runCatchingExceptions([&]() { _::runTransaction(connection, work); })) {
      return kj::mv(*exception);
    }
    return kj::READY_NOW;
  }

private:
  // Removed, with the database in it, after the connection closes (members die in reverse).
  struct TemporaryDirectory {
    TemporaryDirectory() {
      auto base = std::filesystem::temp_directory_path() / "payhost-testhost-XXXXXX";
      std::string pattern = base.native();
      KJ_REQUIRE(mkdtemp(pattern.data()) != nullptr, "cannot create a temporary directory",
                 pattern.c_str());
      path = pattern;
    }
    ~TemporaryDirectory() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
    KJ_DISALLOW_COPY(TemporaryDirectory);

    std::filesystem::path path;
  };

  TemporaryDirectory dir;
  kj::String name_;
  _::SqliteConnection connection;
};

class TestClock final : public Clock {
public:
  // Starts at 2026-01-01T00:00:00Z: a fixed start makes tests reproducible.
  kj::Date now() override {
    return kj::UNIX_EPOCH + int64_t{1767225600} * kj::SECONDS +
           (timerImpl.now() - kj::origin<kj::TimePoint>());
  }
  kj::Timer& timer() override { return timerImpl; }

  kj::TimerImpl timerImpl{kj::origin<kj::TimePoint>()};
};

class RecordingLogger final : public Logger {
public:
  void write(LogLevel level, kj::StringPtr event, kj::ArrayPtr<const LogField> fields) override {
    kj::Vector<kj::String> parts;
    parts.add(kj::heapString(event));
    for (auto& field : fields)
      parts.add(kj::str(field.key, "=", field.value));
    records.add(LogRecord{level, kj::heapString(event), kj::strArray(parts, " ")});
  }
  bool enabled(LogLevel) const override { return true; }

  kj::Vector<LogRecord> records;
};

}  // namespace

class TestHost::Impl final : public Context {
public:
  Impl(const payhost_plugin_v1_descriptor& plugin, kj::StringPtr configToml)
      : descriptor(plugin), config_(Config::parse(configToml, "<test config>")) {
    KJ_IF_MAYBE (problem, describeIncompatibility(plugin)) {
      KJ_FAIL_REQUIRE("plugin refused by the test host", *problem);
    }
    char message[1024] = {0};
    payhost_error_v1 error{message, sizeof(message)};
    void* created = plugin.create(static_cast<Context*>(this), &error);
    KJ_REQUIRE(created != nullptr, "plugin constructor failed", plugin.name, message);
    instance = static_cast<Plugin*>(created);
    // The destructor does not run when the constructor throws.
    KJ_ON_SCOPE_FAILURE({
      descriptor.destroy(instance);
      instance = nullptr;
    });
    instance->ready().wait(waitScope);
  }

  ~Impl() noexcept(false) {
    services.clear();
    provided.clear();
    if (instance != nullptr) descriptor.destroy(instance);
  }

  kj::StringPtr pluginName() override { return descriptor.name; }
  kj::StringPtr pluginVersion() override { return descriptor.version; }
  uint32_t shardIndex() override { return 0; }
  uint32_t shardCount() override { return 1; }
  Logger& log() override { return logger; }
  const Config& config() override { return config_; }
  Clock& clock() override { return clock_; }

  capnp::Capability::Client serviceCapability(kj::StringPtr name) override {
    return kj::heap<LateBoundService>(*this, kj::heapString(name));
  }

  KeyHandle& keys(kj::StringPtr name) override {
    auto it = keyHandles.find(std::string(name.cStr()));
    KJ_REQUIRE(it != keyHandles.end(), "no such key in the test host (TestHost::provideKey)", name);
    return *it->second;
  }

  Database& sql(kj::StringPtr name) override {
    auto it = databases.find(std::string(name.cStr()));
    KJ_REQUIRE(it != databases.end(),
               "no such database in the test host (TestHost::provideDatabase)", name);
    return *it->second;
  }

  kj::Promise<void> offloadWork(kj::Function<void()> work) override {
    // Deterministic: the work runs at once, on the test's thread.
    ++offloads;
    KJ_IF_MAYBE (exception, kj::runCatchingExceptions([&]() { work(); })) {
      return kj::mv(*exception);
    }
    return kj::READY_NOW;
  }

  kj::StringPtr callerOf(const void*) override { return callerIdentity; }

  kj::Maybe<capnp::Capability::Client> lookup(kj::StringPtr name) {
    std::string key(name.cStr());
    auto it = provided.find(key);
    if (it != provided.end()) return it->second;
    auto own = services.find(key);
    if (own != services.end()) return own->second;
    for (size_t i = 0; i < descriptor.service_count; ++i) {
      if (name == descriptor.services[i].name) {
        auto capability = instance->service(name);
        services.emplace(key, capability);
        return kj::mv(capability);
      }
    }
    return nullptr;
  }

  const payhost_plugin_v1_descriptor& descriptor;
  kj::EventLoop loop;
  kj::WaitScope waitScope{loop};
  TestClock clock_;
  RecordingLogger logger;
  Config config_;
  kj::String callerIdentity = kj::heapString("test");
  std::map<std::string, capnp::Capability::Client> provided;
  std::map<std::string, capnp::Capability::Client> services;
  std::map<std::string, KeyHandle*> keyHandles;
  std::map<std::string, Database*> databases;
  std::map<std::string, kj::Own<SqliteTestDatabase>> ownDatabases;
  uint64_t offloads = 0;
  Plugin* instance = nullptr;
};

namespace {

capnp::Capability::Server::DispatchCallResult LateBoundService::dispatchCall(
    uint64_t interfaceId, uint16_t methodId,
    capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) {
  KJ_IF_MAYBE (target, host.lookup(name)) {
    auto params = context.getParams();
    auto request = target->typelessRequest(interfaceId, methodId, params.targetSize());
    request.set(params);
    context.releaseParams();
    return {context.tailCall(kj::mv(request)), false};
  }
  return {KJ_EXCEPTION(DISCONNECTED, "no such service in the test host", name), false};
}

}  // namespace

TestHost::TestHost(const payhost_plugin_v1_descriptor& plugin, kj::StringPtr configToml)
    : impl(kj::heap<Impl>(plugin, configToml)) {}

TestHost::~TestHost() noexcept(false) = default;

capnp::Capability::Client TestHost::serviceCapability(kj::StringPtr name) {
  KJ_IF_MAYBE (capability, impl->lookup(name)) {
    return kj::mv(*capability);
  }
  KJ_FAIL_REQUIRE("the plugin does not provide this service", name, impl->descriptor.name);
}

void TestHost::provideKey(kj::StringPtr name, KeyHandle& handle) {
  impl->keyHandles.insert_or_assign(std::string(name.cStr()), &handle);
}

void TestHost::provideDatabase(kj::StringPtr name, Database& database) {
  impl->databases.insert_or_assign(std::string(name.cStr()), &database);
}

void TestHost::setCaller(kj::StringPtr identity) {
  impl->callerIdentity = kj::heapString(identity);
}

Database& TestHost::sqliteDatabase(kj::StringPtr name) {
  std::string key(name.cStr());
  auto it = impl->ownDatabases.find(key);
  if (it == impl->ownDatabases.end()) {
    it = impl->ownDatabases.emplace(key, kj::heap<SqliteTestDatabase>(name)).first;
  }
  impl->databases.insert_or_assign(key, it->second.get());
  return *it->second;
}

uint64_t TestHost::offloadCount() const {
  return impl->offloads;
}

void TestHost::provide(kj::StringPtr name, capnp::Capability::Client capability) {
  impl->provided.insert_or_assign(std::string(name.cStr()), kj::mv(capability));
}

kj::WaitScope& TestHost::waitScope() {
  return impl->waitScope;
}

void TestHost::advanceTime(kj::Duration delay) {
  // A call sent but not yet delivered starts on the next turn; let it start (and arm its timers)
  // at the current time before the clock moves.
  impl->waitScope.poll();
  impl->clock_.timerImpl.advanceTo(impl->clock_.timerImpl.now() + delay);
  impl->waitScope.poll();
}

kj::ArrayPtr<const LogRecord> TestHost::logs() const {
  return impl->logger.records.asPtr();
}

uint64_t TestHost::liveObjects() const {
  return impl->descriptor.live_objects();
}

}  // namespace payhost::testing
