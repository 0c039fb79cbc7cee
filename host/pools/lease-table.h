// Per-plugin accounting of one pool's leases: the quotas every pool the host lends (worker
// threads, database connections) enforces the same way.
//
// Quotas: each plugin may have a reservation (leases always available to it) and a limit (leases
// it may never exceed; 0: the capacity). A lease is granted when the plugin is under its limit and
// either under its reservation or there is capacity left beyond everyone's unused reservations;
// otherwise the request waits, first come first served (nobody overtakes an earlier waiter of the
// same plugin), up to `wait`, then fails with OVERLOADED naming the plugin and the pool. Giving up
// a waiting request (dropping its promise) gives its place back.
//
// Owners: each lease is also tagged with an owner (the plugin version that asked, by generation
// id), so that leases still held when a version unloads can be found, counted and, for waiters,
// cancelled (`cancelOwner`).
//
// Thread-safety: thread-safe. A `Lease` may be released on any thread; the table outlives every
// lease it granted. Grant callbacks run on the thread that frees the lease (or the caller's, when
// granted at once), never under the table's lock.

#pragma once

#include <kj/async.h>
#include <kj/function.h>
#include <kj/mutex.h>
#include <kj/string.h>
#include <kj/timer.h>
#include <kj/vector.h>

#include <cstdint>
#include <list>
#include <map>
#include <string>

namespace payhost::host {

class LeaseTable {
public:
  struct Options {
    // For messages: "worker pool", "database pool ledger".
    kj::String pool;
    // What one lease is, plural, for messages: "leases", "connections"; what the capacity counts:
    // "threads", "connections".
    kj::String unit;
    kj::String capacityUnit;
    uint32_t capacity = 1;
    kj::Duration wait = 100 * kj::MILLISECONDS;
  };

  explicit LeaseTable(Options options);
  ~LeaseTable() noexcept(false);
  KJ_DISALLOW_COPY(LeaseTable);

  // One granted lease; given back when destroyed (or `release()`d). Movable, not copyable.
  class Lease {
  public:
    Lease() = default;
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    ~Lease() noexcept(false);
    KJ_DISALLOW_COPY(Lease);

    bool held() const { return table != nullptr; }
    void release();

  private:
    friend class LeaseTable;
    Lease(LeaseTable& table, std::string plugin, uint64_t owner)
        : table(&table), plugin(kj::mv(plugin)), owner(owner) {}
    LeaseTable* table = nullptr;
    std::string plugin;
    uint64_t owner = 0;
  };

  // Sets `plugin`'s reservation and limit (limit 0: the capacity). Throws when the reservations
  // would exceed the capacity, or the limit is below the reservation.
  void setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit);

  // A lease at once, or null when `plugin` would have to wait (or someone of `plugin` waits).
  kj::Maybe<Lease> tryAcquire(kj::StringPtr plugin, uint64_t owner = 0);

  // Waits for a lease; `timer` is the calling loop's timer. Rejects OVERLOADED after the wait,
  // DISCONNECTED when `cancelOwner(owner)` drops the request.
  kj::Promise<Lease> acquire(kj::StringPtr plugin, kj::Timer& timer, uint64_t owner = 0);

  // Like `acquire`, but hands the lease to `granted` on the thread that grants it (at once on the
  // calling thread, or later on the thread that frees a lease), so the caller's loop is not in the
  // way. The promise resolves once the lease was handed over. After the grant, cancelling the
  // promise changes nothing: `granted` owns the lease.
  kj::Promise<void> acquireThen(kj::StringPtr plugin, kj::Timer& timer, uint64_t owner,
                                kj::Function<void(Lease)> granted);

  // Drops the waiting requests of `owner` (they reject DISCONNECTED) and returns how many leases
  // `owner` still holds.
  struct OwnerReport {
    uint32_t waitersCancelled;
    uint32_t held;
  };
  OwnerReport cancelOwner(uint64_t owner);

  struct Stats {
    uint32_t inUse;
    uint32_t waiting;
    uint64_t granted;
    uint64_t timeouts;
    // Total time granted requests spent waiting, and the longest of them since the last call
    // of `takeMaxWait()` (for scaling decisions).
    kj::Duration waitTime;
  };
  Stats stats() const;
  // The longest wait of a granted or timed-out request since the last call; resets it.
  kj::Duration takeMaxWait();

  // Leases `plugin` holds now; leases `owner` holds now.
  uint32_t heldBy(kj::StringPtr plugin) const;
  uint32_t heldByOwner(uint64_t owner) const;

  // The most leases the pool can ever lend (reservations are checked against it).
  uint32_t capacity() const { return options.capacity; }

  // A pool that scales lends beyond reservations only up to its size now (1..capacity; 0 or
  // never set: the capacity). Raising it grants waiters at once.
  void setSoftCapacity(uint32_t capacity);
  uint32_t softCapacity() const;
  // Requests waiting although their plugin is under its limit: more capacity would serve them.
  uint32_t waitingForCapacity() const;

  struct Ticket;

private:
  struct Quota {
    uint32_t reserve = 0;
    uint32_t limit = 0;
    uint32_t inUse = 0;
  };
  struct State {
    std::map<std::string, Quota> quotas;
    std::map<uint64_t, uint32_t> owners;
    std::list<kj::Own<Ticket>> waiters;
    uint32_t totalInUse = 0;
    uint32_t softCapacity = 0;
    uint64_t granted = 0;
    uint64_t timeouts = 0;
    kj::Duration waitTime = 0 * kj::NANOSECONDS;
    kj::Duration maxWait = 0 * kj::NANOSECONDS;
  };

  Options options;
  kj::MutexGuarded<State> state;

  bool mayTake(State& s, const std::string& plugin);
  void take(State& s, const std::string& plugin, uint64_t owner);
  void giveBack(const std::string& plugin, uint64_t owner);
  void grantWaiting(State& s, kj::Vector<kj::Own<Ticket>>& grants);
  void handOver(kj::Vector<kj::Own<Ticket>>& grants);
  kj::Exception overloaded(State& s, const std::string& plugin);
};

}  // namespace payhost::host
