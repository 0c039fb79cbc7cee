// The services of one shard: each loaded generation's instance on this shard, and the routes
// that send calls by service name to whichever instance serves the name when the call is made.
//
// Every call through a route is counted (in flight, total, failed; per method: calls, errors by
// kind, latency), waits for an admission turn when its plugin has `[plugin.admission]` limits
// (per shard), pins the generation it went to until it completes, and crosses into the plugin
// through the instance's membrane, so that revoking the membrane cuts every capability the
// plugin handed out. Exceptions coming back from
// plugin code are copied into host-owned memory before they travel on.
//
// Shard-local: create, use and destroy on the shard's event loop thread only.

#pragma once

#include "host/loader/generation.h"
#include "host/log/logger.h"

#include <payhost/context.h>

#include <capnp/capability.h>
#include <kj/async.h>
#include <kj/mutex.h>
#include <kj/refcount.h>
#include <kj/timer.h>

#include <atomic>
#include <map>
#include <string>
#include <tuple>

namespace payhost::host {

class WorkerPool;
class KeyStore;
class SqlPool;
class Outbound;
class ShardOutbound;

// What the shards share with the host: call counters (for status and drain) and the pools lent
// to plugins. Thread-safe; outlives every shard.
struct HostShared {
  WorkerPool* workers = nullptr;
  KeyStore* keys = nullptr;
  // The `[databases.NAME]` pools.
  kj::ArrayPtr<kj::Own<SqlPool>> databases;
  // The `[remotes.NAME]` services; null when the config names none.
  Outbound* outbound = nullptr;
  std::atomic<uint64_t> total{0};
  std::atomic<uint64_t> failed{0};
  std::atomic<int64_t> inFlight{0};

  // Lease accounting at unload. Leases a plugin version still held when its last shard removed
  // it, by (plugin, pool, outcome): "reclaimed" (the host took them back: waiting requests
  // dropped, work not yet started dropped unrun) or "held" (plugin code still running holds them:
  // a thread cannot be stopped; if it never returns the version stays parked).
  using LeakKey = std::tuple<std::string, std::string, std::string>;
  kj::MutexGuarded<std::map<LeakKey, uint64_t>> leaked;
  // Shards that removed each generation so far; the last one reclaims its leases.
  kj::MutexGuarded<std::map<uint64_t, uint32_t>> uninstalledOn;
};

// Who makes the calls through a route: one per client connection (its verified identity, what it
// may call, its limit on calls in flight), or one per plugin instance for calls between plugins
// in this host. Shard-local; refcounted because routes and calls in flight hold it.
class Caller : public kj::Refcounted {
public:
  virtual ~Caller() noexcept(false) = default;

  // The identity plugins see through `Context::caller()`: a client certificate's common name,
  // an insecure listener's configured identity, or "plugin:NAME".
  virtual kj::StringPtr identity() = 0;

  // Whether this caller may call `methodId` of `interfaceId` on `service` now; null to go on, or
  // the exception that fails the call (PERMISSION refusals are FAILED, a full connection
  // OVERLOADED). On null, `callEnded()` follows when the call completes.
  virtual kj::Maybe<kj::Exception> callStarting(kj::StringPtr service, uint64_t interfaceId,
                                                uint16_t methodId) = 0;
  virtual void callEnded() = 0;
};
// Takes back what `generation` still holds in the pools of `shared` (see HostShared::leaked),
// logs `lease.leaked` per pool (plugin, version, pool, reclaimed, held) and counts it. Thread-safe.
void reclaimLeases(const Generation& generation, HostShared& shared, LogSink& log);

class ShardServices {
public:
  ShardServices(uint32_t shardIndex, uint32_t shardCount, LogSink& log, kj::Timer& timer,
                HostShared& counters);
  ~ShardServices() noexcept(false);
  KJ_DISALLOW_COPY(ShardServices);

  // Creates this shard's instance of `generation`, waits for its readiness check and routes the
  // generation's services to it. Rejects (and leaves nothing behind) when the plugin's
  // constructor throws or its readiness check fails.
  kj::Promise<void> install(kj::Own<Generation> generation);

  // Hot swap, in steps. `prepare` creates this shard's instance of `generation` and waits for its
  // readiness check, without routing anything to it (a rejection leaves nothing behind).
  // `activate` routes all of the generation's services to that instance in one step; calls
  // already in flight elsewhere finish where they are. `setCanary` routes `percent` of new calls
  // to it instead; `clearCanary` stops that.
  kj::Promise<void> prepare(kj::Own<Generation> generation);
  void activate(const Generation& generation);
  void setCanary(const Generation& generation, uint32_t percent);
  void clearCanary(const Generation& generation);

  // The state of `generation`'s instance (see Plugin::exportState), copied into host memory.
  kj::Maybe<kj::Array<capnp::word>> exportState(const Generation& generation);
  // Hands `state` to `generation`'s instance; throws what the plugin throws.
  void importState(const Generation& generation, kj::ArrayPtr<const capnp::word> state);

  // Removes the instance of `generation` (if any) and the routes to it; its membrane is revoked,
  // so calls still in flight on it fail with DISCONNECTED.
  void uninstall(const Generation& generation);

  // A capability to the service `name`, resolved at each call: calls fail with DISCONNECTED while
  // nothing serves `name`. Every call through it is made by `caller` (checked, and named to the
  // plugin); a null caller is trusted host code, named "host".
  capnp::Capability::Client route(kj::StringPtr name, kj::Own<Caller> caller = {});

  // The identity of the caller of the call in flight on this shard whose parameters are at
  // `paramsLocation` (see `Context::callerOf`; each call carries its caller and its own copy of
  // its parameters); empty when no such call holds its parameters.
  kj::StringPtr callerOf(const void* paramsLocation) const;

  // Whether `name` is served on this shard now.
  bool serves(kj::StringPtr name) const;

  struct ServiceView {
    kj::StringPtr name;
    const ServiceDeclaration& declaration;
    const Generation& generation;
  };
  kj::Array<ServiceView> list() const;

  // From now on, new calls fail with DISCONNECTED ("host is draining").
  void startDraining();
  // Resolves when no call routed on this shard is in flight.
  kj::Promise<void> whenIdle();
  uint32_t inFlight() const { return inFlight_; }

  HostShared& shared() { return counters; }

  // This shard's connections to remote hosts, for `Context::service` of a name that a
  // `[remotes.NAME]` table maps there. `outbound` outlives every plugin instance on the shard.
  void setOutbound(ShardOutbound& outbound) { outbound_ = &outbound; }
  kj::Maybe<ShardOutbound&> outbound() { return outbound_; }

  // Revokes every membrane and destroys every instance (on shutdown).
  void clear();

  struct Entry;
  struct Instance;

private:
  friend class Route;
  Instance& instanceOf(const Generation& generation);
  void callStarted();
  void callEnded();

  uint32_t shardIndex;
  uint32_t shardCount;
  LogSink& log;
  kj::Timer& timer;
  HostShared& counters;
  bool draining = false;
  ShardOutbound* outbound_ = nullptr;
  uint32_t inFlight_ = 0;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> idleFulfiller;
  std::map<std::string, kj::Own<Entry>> entries;
  std::map<uint64_t, kj::Own<Instance>> instances;
};

}  // namespace payhost::host
