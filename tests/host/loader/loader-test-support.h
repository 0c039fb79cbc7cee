// Helpers shared by the loader tests: fixture paths, temporary directories, reading
// /proc/self/maps independently of the code under test, and a minimal `payhost::Context` for
// creating plugin instances without a host.
//
// Single-threaded test code only.

#pragma once

#include <payhost/config.h>
#include <payhost/context.h>
#include <payhost/log.h>

#include <capnp/capability.h>
#include <kj/debug.h>
#include <kj/string.h>
#include <kj/timer.h>

#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace payhost::host::testsupport {

inline std::string fixturePath(std::string_view file) {
  return std::string(PAYHOST_FIXTURE_DIR) + "/" + std::string(file);
}

// A load id no other test in this process uses: a parked or still-mapped library from one test
// keeps its memfd name ("payhost:<file>:<id>") mapped for the life of the process. Ids start at
// 1000 so that no id is a prefix of another.
inline uint64_t nextLoadId() {
  static uint64_t next = 1000;
  return next++;
}

inline std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KJ_REQUIRE(in.good(), "cannot read", path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it.
class TempDir {
public:
  TempDir() {
    const char* base = getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
                          "/payhost-loader-test-XXXXXX";
    KJ_REQUIRE(mkdtemp(pattern.data()) != nullptr, "mkdtemp failed", pattern);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }

private:
  std::string path_;
};

struct Mapping {
  uintptr_t begin;
  uintptr_t end;
};

// The ranges of /proc/self/maps whose path is exactly `name` (memfd mappings read
// "<name> (deleted)"). Parsed here rather than with the loader's own `isMapped`.
inline std::vector<Mapping> mappingsNamed(kj::StringPtr name) {
  std::vector<Mapping> result;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  std::string wanted(name.cStr());
  std::string deleted = wanted + " (deleted)";
  while (std::getline(maps, line)) {
    unsigned long begin = 0, end = 0;
    int pathAt = -1;
    if (sscanf(line.c_str(), "%lx-%lx %*s %*s %*s %*s %n", &begin, &end, &pathAt) < 2 ||
        pathAt < 0) {
      continue;
    }
    std::string_view path(line.c_str() + pathAt);
    if (path == wanted || path == deleted) result.push_back({begin, end});
  }
  return result;
}

inline bool anyMappingNamed(kj::StringPtr name) {
  return !mappingsNamed(name).empty();
}

// Whether `address` lies in a mapping whose path is `name`.
inline bool addressMappedFrom(const void* address, kj::StringPtr name) {
  auto at = reinterpret_cast<uintptr_t>(address);
  for (auto& mapping : mappingsNamed(name)) {
    if (at >= mapping.begin && at < mapping.end) return true;
  }
  return false;
}

// Whether any mapping's path contains `text` (for paths that must never be mapped).
inline bool anyMappingMentions(std::string_view text) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

class RecordingLogger final : public Logger {
public:
  void write(LogLevel level, kj::StringPtr event, kj::ArrayPtr<const LogField> fields) override {
    events.push_back(std::string(event.cStr()));
  }
  bool enabled(LogLevel level) const override { return true; }

  std::vector<std::string> events;
};

class FixedClock final : public Clock {
public:
  kj::Date now() override { return kj::UNIX_EPOCH; }
  kj::Timer& timer() override { return timerImpl; }

private:
  kj::TimerImpl timerImpl{kj::origin<kj::TimePoint>()};
};

// Just enough of a host for a plugin's constructor: shard 0 of 1, an empty config, a logger
// that keeps event names, and no other services.
class TestContext final : public Context {
public:
  kj::StringPtr pluginName() override { return "echo"; }
  kj::StringPtr pluginVersion() override { return "1.0.0"; }
  uint32_t shardIndex() override { return 0; }
  uint32_t shardCount() override { return 1; }
  Logger& log() override { return logger; }
  const Config& config() override { return config_; }
  Clock& clock() override { return clock_; }
  capnp::Capability::Client serviceCapability(kj::StringPtr name) override {
    return KJ_EXCEPTION(DISCONNECTED, "no services in the loader test", name);
  }
  KeyHandle& keys(kj::StringPtr name) override {
    KJ_FAIL_REQUIRE("no keys in the loader test", name);
  }
  Database& sql(kj::StringPtr name) override {
    KJ_FAIL_REQUIRE("no databases in the loader test", name);
  }
  kj::Promise<void> offloadWork(kj::Function<void()> work) override {
    work();
    return kj::READY_NOW;
  }
  kj::StringPtr callerOf(const void*) override { return "test"; }

  // What `payhost_plugin_v1_descriptor::create` expects as its context argument.
  void* asCreateArgument() { return static_cast<Context*>(this); }

  RecordingLogger logger;

private:
  Config config_;
  FixedClock clock_;
};

}  // namespace payhost::host::testsupport
