// What payhostd exports on /metrics: per plugin, service and method call counts, errors by
// kind and a latency histogram; each loaded plugin version; admission; the worker pool and the
// database pools; and
// host-wide calls in flight and connections. Read from the counters the shards bump (relaxed
// atomics on each Generation and in HostShared), so a scrape never stops a shard.
//
// Method labels are the method names when the service's interface is one of payhost's schemas
// (payments.capnp); for any other interface they are the method ordinal, e.g. method="0".
//
// Control thread only (it walks the Registry).

#pragma once

#include "host/pools/sql-pool.h"
#include "host/pools/worker-pool.h"
#include "host/registry/registry.h"
#include "host/registry/shard-services.h"

#include <kj/string.h>
#include <kj/vector.h>

namespace payhost::host {

struct HostMetricsInput {
  const Registry& registry;
  const HostShared& shared;
  // Null once the pool is gone (shutdown).
  kj::Maybe<WorkerPool::Stats> workers;
  // One entry per database pool ([databases.NAME]).
  struct Database {
    kj::StringPtr name;
    SqlPool::Stats stats;
  };
  kj::Vector<Database> databases;
  uint32_t connectionsOpen = 0;
  uint32_t shards = 0;
  bool draining = false;
};

kj::String renderHostMetrics(const HostMetricsInput& input);

// The `method` label of method `methodId` of interface `interfaceId`: its name when the
// interface is known to the host, else its ordinal.
kj::String methodLabel(uint64_t interfaceId, uint16_t methodId);

}  // namespace payhost::host
