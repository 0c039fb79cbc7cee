#include <payhost/compat.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <capnp/any.h>
#include <kj/debug.h>
#include <kj/timer.h>

#include <sqlite3.h>

#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

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

// A real SQLite database in a temporary directory, with payhostd's SQLite settings and
// parameter rules (host/pools/sql-pool.cpp's SqliteConnection; keep the two in step).
class SqliteTestDatabase final : public Database {
public:
  explicit SqliteTestDatabase(kj::StringPtr name) : name_(kj::heapString(name)) {
    auto base = std::filesystem::temp_directory_path() / "payhost-testhost-XXXXXX";
    std::string pattern = base.native();
    KJ_REQUIRE(mkdtemp(pattern.data()) != nullptr, "cannot create a temporary directory",
               pattern.c_str());
    dir = pattern;
    auto path = dir / (std::string(name.cStr()) + ".sqlite");
    int status =
        sqlite3_open_v2(path.c_str(), &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (status != SQLITE_OK) {
      auto message = kj::str(db == nullptr ? sqlite3_errstr(status) : sqlite3_errmsg(db));
      sqlite3_close(db);
      db = nullptr;
      removeDir();
      KJ_FAIL_REQUIRE("cannot open the test host's SQLite file", path.c_str(), message);
    }
    sqlite3_busy_timeout(db, 10000);
    execute("PRAGMA journal_mode=WAL", nullptr);
    execute("PRAGMA synchronous=FULL", nullptr);
    execute("PRAGMA foreign_keys=ON", nullptr);
  }
  ~SqliteTestDatabase() noexcept(false) {
    sqlite3_close_v2(db);
    removeDir();
  }
  KJ_DISALLOW_COPY(SqliteTestDatabase);

  kj::StringPtr name() override { return name_; }
  SqlDialect dialect() override { return SqlDialect::SQLITE; }

  kj::Promise<void> transactionWork(kj::Function<void(SqlTransaction&)> work) override {
    Transaction tx(*this);
    KJ_IF_MAYBE (exception, kj::runCatchingExceptions([&]() {
                   execute("BEGIN IMMEDIATE", nullptr);
                   work(tx);
                 })) {
      kj::runCatchingExceptions([&]() { execute("ROLLBACK", nullptr); });
      return kj::mv(*exception);
    }
    KJ_IF_MAYBE (exception, kj::runCatchingExceptions([&]() { execute("COMMIT", nullptr); })) {
      kj::runCatchingExceptions([&]() { execute("ROLLBACK", nullptr); });
      return kj::mv(*exception);
    }
    return kj::READY_NOW;
  }

  std::filesystem::path directory() const { return dir; }

private:
  class Transaction final : public SqlTransaction {
  public:
    explicit Transaction(SqliteTestDatabase& db) : db(db) {}
    SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) override {
      return db.execute(sql, params);
    }

  private:
    SqliteTestDatabase& db;
  };

  kj::String name_;
  std::filesystem::path dir;
  sqlite3* db = nullptr;

  void removeDir() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }

  [[noreturn]] void fail(kj::StringPtr sql) {
    KJ_FAIL_REQUIRE(kj::str("database ", name_, ": ", sqlite3_errmsg(db), " (in: ", sql, ")"));
  }

  SqlResult execute(kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) {
    const char* rest = sql.cStr();
    SqlResult last;
    while (*rest != '\0') {
      sqlite3_stmt* statement = nullptr;
      const char* tail = nullptr;
      if (sqlite3_prepare_v2(db, rest, -1, &statement, &tail) != SQLITE_OK) fail(sql);
      KJ_DEFER(sqlite3_finalize(statement));
      rest = tail;
      if (statement == nullptr) continue;
      bind(statement, sql, params);
      last = run(statement, sql);
    }
    return last;
  }

  void bind(sqlite3_stmt* statement, kj::StringPtr sql, kj::ArrayPtr<const SqlParam> params) {
    int count = sqlite3_bind_parameter_count(statement);
    for (int i = 1; i <= count; ++i) {
      const char* name = sqlite3_bind_parameter_name(statement, i);
      char* end = nullptr;
      long index = name != nullptr && name[0] == '$' ? strtol(name + 1, &end, 10) : 0;
      if (index < 1 || end == nullptr || *end != '\0' ||
          static_cast<size_t>(index) > params.size()) {
        KJ_FAIL_REQUIRE(kj::str("database ", name_, ": parameter ", name == nullptr ? "?" : name,
                                " has no value (", params.size(),
                                " given; write them $1..$N) (in: ", sql, ")"));
      }
      auto& param = params[index - 1];
      int status = SQLITE_OK;
      switch (param.type()) {
        case SqlType::NULL_:
          status = sqlite3_bind_null(statement, i);
          break;
        case SqlType::INTEGER:
          status = sqlite3_bind_int64(statement, i, param.integer());
          break;
        case SqlType::REAL:
          status = sqlite3_bind_double(statement, i, param.real());
          break;
        case SqlType::TEXT:
          status = sqlite3_bind_text64(statement, i,
                                       reinterpret_cast<const char*>(param.bytes().begin()),
                                       param.bytes().size(), SQLITE_TRANSIENT, SQLITE_UTF8);
          break;
        case SqlType::BLOB:
          status = sqlite3_bind_blob64(statement, i, param.bytes().begin(), param.bytes().size(),
                                       SQLITE_TRANSIENT);
          break;
      }
      if (status != SQLITE_OK) fail(sql);
    }
  }

  SqlResult run(sqlite3_stmt* statement, kj::StringPtr sql) {
    int columns = sqlite3_column_count(statement);
    kj::Vector<SqlValue> cells;
    for (;;) {
      int status = sqlite3_step(statement);
      if (status == SQLITE_DONE) break;
      if (status != SQLITE_ROW) fail(sql);
      for (int c = 0; c < columns; ++c) {
        SqlValue value;
        switch (sqlite3_column_type(statement, c)) {
          case SQLITE_INTEGER:
            value.type = SqlType::INTEGER;
            value.integer = sqlite3_column_int64(statement, c);
            break;
          case SQLITE_FLOAT:
            value.type = SqlType::REAL;
            value.real = sqlite3_column_double(statement, c);
            break;
          case SQLITE_TEXT: {
            auto text = reinterpret_cast<const char*>(sqlite3_column_text(statement, c));
            value = SqlValue::ofText(kj::arrayPtr(text, sqlite3_column_bytes(statement, c)));
            break;
          }
          case SQLITE_BLOB: {
            auto bytes = static_cast<const kj::byte*>(sqlite3_column_blob(statement, c));
            value.type = SqlType::BLOB;
            value.bytes = kj::heapArray(bytes, sqlite3_column_bytes(statement, c));
            break;
          }
          default:
            break;
        }
        cells.add(kj::mv(value));
      }
    }
    auto names = kj::heapArrayBuilder<kj::String>(columns);
    for (int c = 0; c < columns; ++c)
      names.add(kj::str(sqlite3_column_name(statement, c)));
    uint64_t changes = sqlite3_stmt_readonly(statement) ? 0 : sqlite3_changes64(db);
    return SqlResult(names.finish(), cells.releaseAsArray(), changes);
  }
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
