// Database connection pools lent to plugins through `Context::sql`: SQLite (embedded; WAL and
// synchronous=FULL, so a commit is on disk when it returns) and PostgreSQL (libpq).
//
// Connections: at most `maxConnections`; `minConnections` are opened when the pool is created
// (so a wrong path or conninfo shows at start), the rest lazily when every open one is in use,
// and all are reused. A connection that breaks (PostgreSQL) is discarded; the next lease opens a
// new one in its place.
//
// Scaling (`scaling`): the pool's size (the leases it lends beyond reservations) starts at
// max(minConnections, 1); a lease still waiting after `growAfter` raises it by one (up to
// `maxConnections`); a maintenance thread closes connections idle for `idleTimeout` (down to
// `minConnections`) and lowers the size with them. Each decision is logged (`pool.grow`,
// `pool.shrink` with pool, from, to, reason) and counted in `stats()`. Without scaling the size is
// `maxConnections` and only the lazy opening applies.
//
// SQLite transactions begin IMMEDIATE: one transaction at a time holds the file's write lock
// (readers of other connections go on, WAL), the others wait for it up to 10 s, then fail.
//
// Quotas: a transaction holds one lease (one connection) of the plugin's quota for this pool, in
// a `LeaseTable` like the worker pool's: a reservation (always available to the plugin, even
// beyond the pool's current size) and a limit, `maxConnections` leases in all. A lease beyond
// them waits, first come first served, up to `leaseWait`, then fails with OVERLOADED naming the
// plugin and the pool.
//
// Threads: statements run on the worker pool (`WorkerPool::run`, which also holds one of the
// plugin's worker leases while the transaction runs), never on the calling event loop. The pool is
// thread-safe; `transaction` may be called from any thread with a KJ event loop, the promise
// belongs to that loop. The worker pool must be destroyed (joined) before this pool.

#pragma once

#include "host/log/logger.h"

#include <payhost/sql.h>

#include <kj/async.h>
#include <kj/function.h>
#include <kj/string.h>
#include <kj/timer.h>

#include <cstdint>

namespace payhost::host {

class WorkerPool;

class SqlPool {
public:
  struct Options {
    // The pool's name (`[databases.NAME]`), for messages.
    kj::String name;
    SqlDialect dialect = SqlDialect::SQLITE;
    // SQLite: the database file. PostgreSQL: the libpq connection string.
    kj::String target;
    uint32_t minConnections = 0;
    uint32_t maxConnections = 4;
    kj::Duration leaseWait = 100 * kj::MILLISECONDS;
    bool scaling = false;
    // Scaling: grow when a lease waited this long; close connections idle this long.
    kj::Duration growAfter = 20 * kj::MILLISECONDS;
    kj::Duration idleTimeout = 30 * kj::SECONDS;
  };

  // `workers` and `log` outlive the pool. Throws when a first connection cannot be opened.
  SqlPool(Options options, WorkerPool& workers, LogSink& log);
  // Closes the idle connections. No transaction may be running.
  ~SqlPool() noexcept(false);
  KJ_DISALLOW_COPY(SqlPool);

  kj::StringPtr name() const;
  SqlDialect dialect() const;

  // Sets `plugin`'s reservation and limit (limit 0: no limit beyond the capacity). Throws when
  // the reservations would exceed `maxConnections`.
  void setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit);

  // Runs `work` in one transaction on a pooled connection, on the worker pool, once `plugin`
  // holds a lease. Resolves on the calling thread's loop once the commit is durable; when `work`
  // throws the transaction is rolled back and the promise rejects with what it threw. `timer` is
  // the calling loop's timer, for the lease wait. `owner` tags the lease with the plugin version
  // (generation id) that asked, for `reclaim`.
  kj::Promise<void> transaction(kj::StringPtr plugin, kj::Timer& timer,
                                kj::Function<void(SqlTransaction&)> work, uint64_t owner = 0);

  // For metrics.
  struct Stats {
    // Connections open, and of those in use by a transaction.
    uint32_t size;
    uint32_t inUse;
    // Leases waiting for a connection.
    uint32_t waiting;
    uint64_t transactions;
    // Leases that failed OVERLOADED after waiting.
    uint64_t timeouts;
    // Connections discarded because they broke.
    uint64_t discarded;
    // Total time leases spent waiting.
    kj::Duration waitTime;
    // The pool's size now (leases it lends beyond reservations), and the scaling decisions.
    uint32_t capacity;
    uint64_t grown;
    uint64_t shrunk;
  };
  Stats stats() const;

  // Leases `plugin` holds now.
  uint32_t leasesHeld(kj::StringPtr plugin) const;

  // When a plugin version unloads: drops its transactions still waiting for a connection (they
  // reject DISCONNECTED) and reports the connections it still holds. A held connection belongs to
  // a transaction whose function runs (or waits for a worker) on the worker pool: reclaim that
  // work there (`WorkerPool::reclaim`) first; what is still held after it is stuck in plugin code.
  struct Reclaimed {
    uint32_t waiting;
    uint32_t held;
  };
  Reclaimed reclaim(uint64_t owner);

  class Impl;

private:
  kj::Own<Impl> impl;
};

}  // namespace payhost::host
