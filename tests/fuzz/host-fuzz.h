// Shared by the fuzz targets that go through payhostd's own call path rather than the SDK's test
// host: the real plugin .so files (built in the fuzz build, sanitizers and coverage included)
// loaded by the host's loader, installed as shard 0 of 1 in the host's `ShardServices`, with the
// host's real pools behind `Context`: a worker pool, SQLite databases (files in a temporary
// directory, removed at exit) and a key store holding the vault's AES-256-GCM key. Calls reach a
// plugin through a `Route` (access check, admission, counters, the generation's membrane) with a
// `ConnectionCaller`, as a client's calls do.
//
// The caller's identity is "fuzz". Its `[[access]]` rules grant every service except
// "payments.vault.reveal", and of "payments.ledger" only `balance` and `audit`, so refusals are
// reachable too.
//
// Single-threaded (libFuzzer's thread) apart from the pools' own workers.

#pragma once

#include "host/config/daemon-config.h"
#include "host/config/reader-limits.h"
#include "host/loader/generation.h"
#include "host/loader/plugin-library.h"
#include "host/log/logger.h"
#include "host/pools/key-store.h"
#include "host/pools/sql-pool.h"
#include "host/pools/worker-pool.h"
#include "host/registry/shard-services.h"
#include "host/rpc/client-policy.h"
#include "host/rpc/gateway.h"

#include <payhost/config.h>

#include <capnp/serialize.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/vector.h>

#include <sys/random.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#ifndef PAYHOST_FUZZ_PLUGIN_DIR
#error "PAYHOST_FUZZ_PLUGIN_DIR must name the build's plugins/ directory"
#endif

namespace payhost::fuzz {

// One plugin to load: its file under PAYHOST_FUZZ_PLUGIN_DIR ("ledger/ledger.so"), its
// `[plugin.config]` table and the database pools it is granted.
struct PluginSpec {
  kj::StringPtr file;
  kj::StringPtr config;
  kj::ArrayPtr<const kj::StringPtr> databases;
};

class HostHarness {
public:
  // Loads and installs `plugins` in order, over SQLite pools named `databases`. Throws what the
  // loader or a plugin's constructor or readiness check throws.
  HostHarness(kj::ArrayPtr<const PluginSpec> plugins, kj::ArrayPtr<const kj::StringPtr> databases)
      : dir(makeTempDir()), keys(keyEntries(dir)) {
    for (auto name : databases) {
      host::SqlPool::Options options;
      options.name = kj::heapString(name);
      options.dialect = SqlDialect::SQLITE;
      options.target = kj::str((dir / (std::string(name.cStr()) + ".sqlite")).c_str());
      options.minConnections = 1;
      options.maxConnections = 2;
      options.leaseWait = 5 * kj::SECONDS;
      pools.add(kj::heap<host::SqlPool>(kj::mv(options), *workers, sink));
    }
    shared.workers = workers.get();
    shared.keys = &keys;
    shared.databases = pools.asPtr();
    uint64_t loadId = 0;
    for (auto& plugin : plugins) {
      auto path = kj::str(PAYHOST_FUZZ_PLUGIN_DIR, "/", plugin.file);
      auto library = host::PluginLibrary::load(path, ++loadId);
      auto generation = kj::atomicRefcounted<host::Generation>(loadId, kj::mv(library),
                                                               Config::parse(plugin.config, path));
      auto keyGrants = kj::heapArrayBuilder<kj::String>(1);
      keyGrants.add(kj::str("vault"));
      generation->keyGrants = keyGrants.finish();
      generation->databaseGrants = KJ_MAP(name, plugin.databases) {
        return kj::heapString(name);
      };
      services.install(kj::mv(generation)).wait(io.waitScope);
    }
  }

  ~HostHarness() noexcept(false) {
    services.clear();
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  KJ_DISALLOW_COPY(HostHarness);

  // A client connection's caller (identity "fuzz"), as a shard makes one per connection.
  kj::Own<host::ConnectionCaller> newCaller() {
    return kj::refcounted<host::ConnectionCaller>(kj::str("fuzz"), policy, timer());
  }

  kj::Timer& timer() { return io.provider->getTimer(); }

  // Runs the loop until no call routed on this shard is in flight (work on the pools' threads
  // included). A call still running after 8 s is reported as a hang (a finding).
  void settle() {
    auto deadline = timer().now() + 8 * kj::SECONDS;
    io.waitScope.poll();
    while (services.inFlight() > 0) {
      KJ_ASSERT(timer().now() < deadline, "a call is still in flight after 8 s",
                services.inFlight());
      timer().afterDelay(1 * kj::MILLISECONDS).wait(io.waitScope);
      io.waitScope.poll();
    }
  }

  // Sends method `method` of `interfaceId` through a route to `service`, with the Cap'n Proto
  // message in `bytes` (flat array with its segment table) as its parameters, read under the
  // limits payhostd reads a client's messages under, and waits for the answer. The caller is a
  // client connection's, or with `trusted` the host's own (as when a plugin calls another). A
  // malformed message or a failed call is a kj::Exception and ignored; anything else is a finding.
  void callMethod(kj::StringPtr service, uint64_t interfaceId, uint16_t method,
                  const uint8_t* bytes, size_t size, bool trusted = false) {
    size_t words = size / sizeof(capnp::word);
    auto buffer = kj::heapArray<capnp::word>(words);
    memcpy(buffer.begin(), bytes, words * sizeof(capnp::word));
    auto route = trusted ? services.route(service) : services.route(service, newCaller());
    kj::Maybe<kj::Promise<void>> answer;
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                   capnp::FlatArrayMessageReader reader(buffer, host::clientReaderOptions());
                   auto request = route.typelessRequest(interfaceId, method, nullptr);
                   request.set(reader.getRoot<capnp::AnyPointer>());
                   answer = request.send().ignoreResult().eagerlyEvaluate(nullptr);
                 })) {
      (void)e;
      return;
    }
    // Outside the catch: a call that hangs fails the input.
    settle();
    KJ_IF_MAYBE (promise, answer) {
      KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { promise->wait(io.waitScope); })) {
        (void)e;
      }
    }
  }

  kj::AsyncIoContext io = kj::setupAsyncIo();
  std::filesystem::path dir;
  // Errors only, to a file in `dir`; with PAYHOST_FUZZ_LOG=1 set, everything to stderr (to see
  // what a seed or a finding does).
  kj::Own<host::LogSink> ownSink =
      getenv("PAYHOST_FUZZ_LOG") != nullptr
          ? kj::heap<host::LogSink>(LogLevel::DEBUG, host::LogFormat::LOGFMT)
          : kj::heap<host::LogSink>(LogLevel::ERROR, host::LogFormat::LOGFMT,
                                    kj::str((dir / "host.log").c_str()));
  host::LogSink& sink = *ownSink;
  host::KeyStore keys;
  // Destroyed after the worker pool (declared before it): transactions running on it use them.
  kj::Vector<kj::Own<host::SqlPool>> pools;
  kj::Own<host::WorkerPool> workers = kj::heap<host::WorkerPool>(
      host::WorkerPool::Options{2, 4, 5 * kj::SECONDS, 1 * kj::SECONDS}, sink);
  host::HostShared shared;
  host::SecurityCounters security;
  kj::Array<host::AccessRule> rules = accessRules();
  host::AccessPolicy access{rules};
  host::LimitsConfig limits;
  host::ClientPolicy policy{access, limits, security, sink};
  host::ShardServices services{0, 1, sink, timer(), shared};

private:
  static std::filesystem::path makeTempDir() {
    auto base = std::filesystem::temp_directory_path() / "payhost-fuzz-XXXXXX";
    std::string pattern = base.native();
    KJ_ASSERT(mkdtemp(pattern.data()) != nullptr, "mkdtemp failed", pattern.c_str());
    return pattern;
  }

  // The vault's key: 32 random bytes, hex, in a 0600 file (the key store refuses any other mode).
  static kj::Array<host::KeyEntry> keyEntries(const std::filesystem::path& dir) {
    unsigned char bytes[32];
    KJ_ASSERT(getrandom(bytes, sizeof(bytes), 0) == sizeof(bytes));
    char hex[65];
    for (size_t i = 0; i < 32; ++i)
      snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
    auto path = dir / "vault.hex";
    std::ofstream(path) << hex << "\n";
    KJ_ASSERT(chmod(path.c_str(), 0600) == 0);
    auto entries = kj::heapArrayBuilder<host::KeyEntry>(1);
    entries.add(host::KeyEntry{kj::str("vault"), KeyType::AES_256_GCM, kj::str(path.c_str())});
    return entries.finish();
  }

  static kj::Array<host::AccessRule> accessRules() {
    auto rules = kj::heapArrayBuilder<host::AccessRule>(2);
    host::AccessRule all{kj::str("fuzz"), {}, {}};
    for (auto name : {"payments.payments", "payments.card", "payments.fraud", "payments.fx",
                      "payments.vault"}) {
      all.services.add(kj::str(name));
    }
    rules.add(kj::mv(all));
    host::AccessRule ledger{kj::str("fuzz"), {}, {}};
    ledger.services.add(kj::str("payments.ledger"));
    ledger.methods.add(kj::str("balance"));
    ledger.methods.add(kj::str("audit"));
    rules.add(kj::mv(ledger));
    return rules.finish();
  }
};

// Writes `frames` (Cap'n Proto messages, flat arrays one after another) to `dir`/`name`.
inline void writeFrames(const char* dir, kj::StringPtr name,
                        kj::ArrayPtr<kj::Own<capnp::MallocMessageBuilder>> frames,
                        kj::ArrayPtr<const kj::byte> prefix = nullptr) {
  auto path = kj::str(dir, "/", name);
  std::ofstream out(path.cStr(), std::ios::binary | std::ios::trunc);
  KJ_ASSERT(out.good(), path);
  out.write(reinterpret_cast<const char*>(prefix.begin()),
            static_cast<std::streamsize>(prefix.size()));
  for (auto& frame : frames) {
    auto words = capnp::messageToFlatArray(*frame);
    auto bytes = words.asBytes();
    out.write(reinterpret_cast<const char*>(bytes.begin()),
              static_cast<std::streamsize>(bytes.size()));
  }
  KJ_ASSERT(out.good(), path);
}

// The one host a target keeps for its whole run, as one payhostd serves many connections: made by
// `make` on the first input, so state from earlier inputs stays; deleted at exit.
inline HostHarness& sharedHost(HostHarness* (*make)()) {
  static HostHarness* host = [make] {
    auto* made = make();
    atexit([] { delete host; });
    return made;
  }();
  return *host;
}

}  // namespace payhost::fuzz
