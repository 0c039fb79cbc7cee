// One loaded version of one plugin: its library, its descriptor (copied into host memory) and
// its config. Shared by every shard that runs an instance of it.
//
// Lifetime: each call routed to the generation, and each shard-local instance, holds a reference
// (`kj::addRef`); the library is closed when the last reference goes, and only if the plugin
// reports no live objects (otherwise it is parked: see PluginLibrary::unload). The library is
// the first member, so it is destroyed last.
//
// Thread-safety: immutable after construction except the atomic call counters.

#pragma once

#include "host/loader/plugin-library.h"

#include <payhost/config.h>

#include <kj/array.h>
#include <kj/refcount.h>
#include <kj/string.h>
#include <kj/time.h>

#include <atomic>
#include <cstdint>

namespace payhost::host {

// Per-method call counters, bumped with relaxed atomics by the shard that routes the call and
// read (not reset) by a metrics scrape. `buckets` are not cumulative; the last is +Inf.
struct MethodCounters {
  static constexpr size_t BUCKETS = 14;
  // Upper bounds of the latency buckets in microseconds (the Prometheus defaults and 1 ms).
  static constexpr uint64_t BUCKET_MICROS[BUCKETS - 1] = {500,     1000,    2500,    5000,   10000,
                                                          25000,   50000,   100000,  250000, 500000,
                                                          1000000, 2500000, 10000000};
  std::atomic<uint64_t> calls{0};
  std::atomic<uint64_t> failed{0};
  std::atomic<uint64_t> overloaded{0};
  std::atomic<uint64_t> disconnected{0};
  std::atomic<uint64_t> unimplemented{0};
  std::atomic<uint64_t> latencyMicrosSum{0};
  std::atomic<uint64_t> buckets[BUCKETS] = {};

  void recordLatency(uint64_t micros) {
    size_t i = 0;
    while (i < BUCKETS - 1 && micros > BUCKET_MICROS[i])
      ++i;
    buckets[i].fetch_add(1, std::memory_order_relaxed);
    latencyMicrosSum.fetch_add(micros, std::memory_order_relaxed);
  }
};

struct ServiceDeclaration {
  kj::String name;
  kj::String interfaceName;
  uint64_t interfaceId;
};

class Generation final : public kj::AtomicRefcounted {
public:
  Generation(uint64_t id, kj::Own<PluginLibrary> library, Config config);
  ~Generation() noexcept;

  uint64_t id() const { return id_; }
  kj::StringPtr name() const { return name_; }
  kj::StringPtr version() const { return version_; }
  kj::ArrayPtr<const ServiceDeclaration> services() const { return services_; }
  const payhost_plugin_v1_descriptor& descriptor() const { return library_->descriptor(); }
  const Config& config() const { return config_; }
  PluginLibrary& library() { return *library_; }
  const PluginLibrary& library() const { return *library_; }
  int64_t loadedAtUnixMs() const { return loadedAtUnixMs_; }

  kj::Own<Generation> addRef() { return kj::atomicAddRef(*this); }

  // Methods are counted by ordinal; ordinals from MAX_METHODS - 1 up share the last slot.
  static constexpr uint16_t MAX_METHODS = 32;
  // The counters of method `methodId` of service number `service` (an index into services()).
  MethodCounters& methodCounters(size_t service, uint16_t methodId) {
    return methodCounters_[service * MAX_METHODS + kj::min(methodId, MAX_METHODS - 1)];
  }
  const MethodCounters& methodCounters(size_t service, uint16_t methodId) const {
    return methodCounters_[service * MAX_METHODS + kj::min(methodId, MAX_METHODS - 1)];
  }

  std::atomic<uint64_t> callsTotal{0};
  std::atomic<uint64_t> callsFailed{0};
  std::atomic<uint32_t> callsInFlight{0};
  // Work handed to the worker pool by this generation's plugin and not yet destroyed: it runs
  // plugin code, so the library stays loaded until it is 0.
  std::atomic<uint32_t> offloadsPending{0};

  // Latency of calls routed to this generation, in buckets of a quarter power of two of
  // microseconds (about 19% wide): enough to judge a canary's p99, cheap to record from any shard.
  static constexpr size_t LATENCY_BUCKETS = 128;
  std::atomic<uint64_t> latency[LATENCY_BUCKETS] = {};
  void recordLatency(kj::Duration elapsed);
  // The latency below which `percent` of recorded calls fell (upper bucket bound); 0 if none.
  kj::Duration latencyPercentile(double percent) const;

  // The copy of the package in the data directory (for rollback), once stored.
  kj::String package;

  // What the operator granted this plugin: key names it may use, and its worker-pool quota
  // (0/0: no reservation, no limit beyond the pool). Set before the generation is shared.
  kj::Array<kj::String> keyGrants;
  // Database pools it may use (`databases = [...]`); its quota applies to each of them.
  kj::Array<kj::String> databaseGrants;
  uint32_t workersReserve = 0;
  uint32_t workersLimit = 0;
  // `[plugin.admission]`, enforced per shard: calls running at once (0: no limit) and calls
  // that may wait for a turn beyond them.
  uint32_t admissionMaxConcurrent = 0;
  uint32_t admissionMaxQueued = 0;
  // Calls refused because the admission queue was full; calls waiting in it now (all shards).
  std::atomic<uint64_t> admissionRejected{0};
  std::atomic<uint32_t> admissionQueued{0};

private:
  kj::Own<PluginLibrary> library_;
  uint64_t id_;
  kj::String name_;
  kj::String version_;
  kj::Array<ServiceDeclaration> services_;
  Config config_;
  int64_t loadedAtUnixMs_;
  kj::Array<MethodCounters> methodCounters_;
};

}  // namespace payhost::host
