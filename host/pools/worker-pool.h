// The host's worker threads (Boost.Asio), lent to plugins through `Context::offload` under
// per-plugin quotas.
//
// Quotas: a `LeaseTable` (see lease-table.h) of `maxThreads` leases: per plugin a reservation and
// a limit; a lease beyond them waits, first come first served, up to `leaseWait`, then fails with
// OVERLOADED naming the plugin and the pool.
//
// Scaling: the pool starts `minThreads` threads, adds one (up to `maxThreads`) whenever a lease is
// granted while every thread is busy, and every `scaleInterval` removes one (down to
// `minThreads`) if fewer than half were busy at every sample during the interval. Each decision is
// logged and counted.
//
// Thread-safety: thread-safe. `run` may be called from any thread that has a KJ event loop; the
// promise it returns belongs to that loop.

#pragma once

#include "host/log/logger.h"

#include <kj/async.h>
#include <kj/function.h>
#include <kj/mutex.h>
#include <kj/string.h>
#include <kj/timer.h>

#include <cstdint>

namespace payhost::host {

class WorkerPool {
public:
  struct Options {
    uint32_t minThreads = 2;
    uint32_t maxThreads = 8;
    kj::Duration leaseWait = 100 * kj::MILLISECONDS;
    kj::Duration scaleInterval = 1 * kj::SECONDS;
  };

  // `log` outlives the pool.
  WorkerPool(Options options, LogSink& log);
  // Waits for work in progress, then joins the threads.
  ~WorkerPool() noexcept(false);
  KJ_DISALLOW_COPY(WorkerPool);

  // Sets `plugin`'s reservation and limit (limit 0: no limit beyond the capacity). Throws when
  // the reservations would exceed the capacity.
  void setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit);

  // Runs `work` on a worker thread once `plugin` holds a lease; resolves (or rejects with what
  // `work` threw) on the calling thread's event loop. `timer` is that loop's timer, for the lease
  // wait. Cancelling the promise while waiting gives up the place in line; once `work` has
  // started it runs to the end (its lease is released then).
  // `owner` tags the lease with the plugin version (generation id) that asked, for `reclaim`.
  kj::Promise<void> run(kj::StringPtr plugin, kj::Timer& timer, kj::Function<void()> work,
                        uint64_t owner = 0);

  // When a plugin version unloads: drops its requests still waiting for a lease and its work
  // granted but not started (the work is destroyed unrun, its lease given back, its promise
  // rejected DISCONNECTED). Work already running cannot be stopped: it is counted in `running`.
  struct Reclaimed {
    uint32_t waiting;
    uint32_t queued;
    uint32_t running;
  };
  Reclaimed reclaim(uint64_t owner);

  struct Stats {
    uint32_t threads;
    uint32_t busy;
    uint32_t waiting;
    uint64_t completed;
    uint64_t timeouts;
    uint64_t grown;
    uint64_t shrunk;
  };
  Stats stats() const;

  // Leases `plugin` holds now; leases the version `owner` holds now.
  uint32_t leasesHeld(kj::StringPtr plugin) const;
  uint32_t leasesHeldByOwner(uint64_t owner) const;

  class Impl;

private:
  kj::Own<Impl> impl;
};

}  // namespace payhost::host
