#include "host/pools/lease-table.h"

#include "host/util/errors.h"

#include <kj/debug.h>
#include <kj/vector.h>

namespace payhost::host {

// One place in line. Its flags and `granted` are guarded by the table's lock until the grant (or
// the cancellation) is decided; after that only the deciding thread touches `granted`.
struct LeaseTable::Ticket : public kj::AtomicRefcounted {
  std::string plugin;
  uint64_t owner = 0;
  kj::Maybe<kj::Function<void(Lease)>> granted;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> signal;
  kj::TimePoint enqueued = kj::origin<kj::TimePoint>();
  bool isGranted = false;
  bool cancelled = false;
};

namespace {

// Holds a lease handed over on another thread until the caller's loop takes it.
struct LeaseSlot : public kj::AtomicRefcounted {
  kj::MutexGuarded<kj::Maybe<LeaseTable::Lease>> lease;
};

kj::TimePoint now() {
  return kj::systemPreciseMonotonicClock().now();
}

}  // namespace

LeaseTable::Lease::Lease(Lease&& other) noexcept
    : table(other.table), plugin(kj::mv(other.plugin)), owner(other.owner) {
  other.table = nullptr;
}

LeaseTable::Lease& LeaseTable::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    // Releasing may grant a waiter; it never throws for a lease this table granted.
    kj::runCatchingExceptions([this]() { release(); });
    table = other.table;
    plugin = kj::mv(other.plugin);
    owner = other.owner;
    other.table = nullptr;
  }
  return *this;
}

LeaseTable::Lease::~Lease() noexcept(false) {
  release();
}

void LeaseTable::Lease::release() {
  auto from = table;
  if (from == nullptr) return;
  table = nullptr;
  from->giveBack(plugin, owner);
}

LeaseTable::LeaseTable(Options options) : options(kj::mv(options)) {
  KJ_REQUIRE(this->options.capacity >= 1, "a pool needs a capacity of at least one",
             this->options.pool);
}

LeaseTable::~LeaseTable() noexcept(false) {
  // Requests still waiting hear that the pool is gone (their promises may outlive it).
  kj::Vector<kj::Own<Ticket>> dropped;
  {
    auto locked = state.lockExclusive();
    for (auto& ticket : locked->waiters) {
      ticket->cancelled = true;
      dropped.add(kj::mv(ticket));
    }
    locked->waiters.clear();
  }
  for (auto& ticket : dropped) {
    ticket->granted = nullptr;
    ticket->signal->reject(KJ_EXCEPTION(DISCONNECTED, "pool is shutting down", options.pool));
  }
}

void LeaseTable::setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit) {
  auto locked = state.lockExclusive();
  uint32_t reserved = reserve;
  for (auto& [name, quota] : locked->quotas) {
    if (name != plugin.cStr()) reserved += quota.reserve;
  }
  if (reserved > options.capacity) {
    PAYHOST_FAIL(FAILED, options.pool, ": reservations (", reserved, ") exceed its capacity (",
                 options.capacity, " ", options.capacityUnit, ") with plugin ", plugin);
  }
  if (limit != 0 && limit < reserve) {
    PAYHOST_FAIL(FAILED, options.pool, ": plugin ", plugin, "'s limit (", limit,
                 ") is below its reservation (", reserve, ")");
  }
  auto& quota = locked->quotas[std::string(plugin.cStr())];
  quota.reserve = reserve;
  quota.limit = limit;
}

void LeaseTable::setSoftCapacity(uint32_t capacity) {
  kj::Vector<kj::Own<Ticket>> grants;
  {
    auto locked = state.lockExclusive();
    locked->softCapacity = kj::min(kj::max(capacity, 1u), options.capacity);
    grantWaiting(*locked, grants);
  }
  handOver(grants);
}

uint32_t LeaseTable::softCapacity() const {
  auto capacity = state.lockShared()->softCapacity;
  return capacity == 0 ? options.capacity : capacity;
}

bool LeaseTable::mayTake(State& s, const std::string& plugin) {
  auto& quota = s.quotas[plugin];
  uint32_t limit = quota.limit == 0 ? options.capacity : quota.limit;
  if (quota.inUse >= limit) return false;
  // A reservation holds up to the full capacity, whatever the pool's size is now.
  if (quota.inUse < quota.reserve) return s.totalInUse < options.capacity;
  // Capacity left once everyone's unused reservations are held back.
  uint32_t heldBack = 0;
  for (auto& [name, other] : s.quotas) {
    if (other.inUse < other.reserve) heldBack += other.reserve - other.inUse;
  }
  uint32_t capacity = s.softCapacity == 0 ? options.capacity : s.softCapacity;
  return s.totalInUse + heldBack < capacity;
}

void LeaseTable::take(State& s, const std::string& plugin, uint64_t owner) {
  ++s.quotas[plugin].inUse;
  ++s.owners[owner];
  ++s.totalInUse;
  ++s.granted;
}

kj::Maybe<LeaseTable::Lease> LeaseTable::tryAcquire(kj::StringPtr plugin, uint64_t owner) {
  auto name = std::string(plugin.cStr());
  auto locked = state.lockExclusive();
  // First come, first served: nobody overtakes a waiter of the same plugin.
  for (auto& waiter : locked->waiters) {
    if (waiter->plugin == name) return nullptr;
  }
  if (!mayTake(*locked, name)) return nullptr;
  take(*locked, name, owner);
  return Lease(*this, kj::mv(name), owner);
}

kj::Exception LeaseTable::overloaded(State& s, const std::string& plugin) {
  auto& quota = s.quotas[plugin];
  auto limit = quota.limit == 0 ? options.capacity : quota.limit;
  return KJ_EXCEPTION(OVERLOADED,
                      kj::str("plugin ", plugin.c_str(), ": ", options.pool, " quota exhausted (",
                              quota.inUse, " of ", limit, " ", options.unit, " in use); waited ",
                              options.wait / kj::MILLISECONDS, " ms"));
}

kj::Promise<void> LeaseTable::acquireThen(kj::StringPtr plugin, kj::Timer& timer, uint64_t owner,
                                          kj::Function<void(Lease)> granted) {
  KJ_IF_MAYBE (lease, tryAcquire(plugin, owner)) {
    granted(kj::mv(*lease));
    return kj::READY_NOW;
  }
  auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
  auto ticket = kj::atomicRefcounted<Ticket>();
  ticket->plugin = std::string(plugin.cStr());
  ticket->owner = owner;
  ticket->granted = kj::mv(granted);
  ticket->signal = kj::mv(paf.fulfiller);
  ticket->enqueued = now();
  kj::Vector<kj::Own<Ticket>> grants;
  {
    auto locked = state.lockExclusive();
    locked->waiters.push_back(kj::atomicAddRef(*ticket));
    // A lease may have come free between tryAcquire and here.
    grantWaiting(*locked, grants);
  }
  handOver(grants);

  // A caller that gives up before the grant leaves the line (its callback goes outside the lock).
  auto leave = kj::defer([this, ticket = kj::atomicAddRef(*ticket)]() mutable {
    kj::Own<Ticket> removed;
    kj::Maybe<kj::Function<void(Lease)>> callback;
    {
      auto locked = state.lockExclusive();
      if (ticket->isGranted || ticket->cancelled) return;
      for (auto it = locked->waiters.begin(); it != locked->waiters.end(); ++it) {
        if (it->get() == ticket.get()) {
          removed = kj::mv(*it);
          locked->waiters.erase(it);
          break;
        }
      }
      ticket->cancelled = true;
      callback = kj::mv(ticket->granted);
    }
  });
  auto signal = paf.promise.fork();
  auto wait = options.wait;
  return signal.addBranch()
      .then([]() { return true; })
      .exclusiveJoin(timer.afterDelay(wait).then([]() { return false; }))
      .then([this, ticket = kj::mv(ticket),
             signal = kj::mv(signal)](bool inTime) mutable -> kj::Promise<void> {
        if (inTime) return kj::READY_NOW;
        kj::Own<Ticket> removed;
        kj::Maybe<kj::Function<void(Lease)>> callback;
        kj::Maybe<kj::Exception> failure;
        {
          auto locked = state.lockExclusive();
          // Decided under the lock: a grant racing the timer either happened (wait for the
          // hand-over) or never will (this request leaves the line).
          if (ticket->isGranted) return signal.addBranch();
          if (ticket->cancelled) return signal.addBranch();
          for (auto it = locked->waiters.begin(); it != locked->waiters.end(); ++it) {
            if (it->get() == ticket.get()) {
              removed = kj::mv(*it);
              locked->waiters.erase(it);
              break;
            }
          }
          ticket->cancelled = true;
          callback = kj::mv(ticket->granted);
          ++locked->timeouts;
          auto waited = now() - ticket->enqueued;
          if (waited > locked->maxWait) locked->maxWait = waited;
          failure = overloaded(*locked, ticket->plugin);
        }
        return kj::mv(KJ_ASSERT_NONNULL(failure));
      })
      .attach(kj::mv(leave));
}

kj::Promise<LeaseTable::Lease> LeaseTable::acquire(kj::StringPtr plugin, kj::Timer& timer,
                                                   uint64_t owner) {
  KJ_IF_MAYBE (lease, tryAcquire(plugin, owner)) {
    return kj::mv(*lease);
  }
  auto slot = kj::atomicRefcounted<LeaseSlot>();
  return acquireThen(plugin, timer, owner,
                     [slot = kj::atomicAddRef(*slot)](Lease lease) mutable {
                       *slot->lease.lockExclusive() = kj::mv(lease);
                     })
      .then([slot = kj::mv(slot)]() mutable {
        kj::Maybe<Lease> taken;
        {
          auto locked = slot->lease.lockExclusive();
          taken = kj::mv(*locked);
          *locked = nullptr;
        }
        return kj::mv(KJ_ASSERT_NONNULL(taken));
      });
}

void LeaseTable::giveBack(const std::string& plugin, uint64_t owner) {
  kj::Vector<kj::Own<Ticket>> grants;
  {
    auto locked = state.lockExclusive();
    auto& quota = locked->quotas[plugin];
    KJ_ASSERT(quota.inUse > 0 && locked->totalInUse > 0, "lease released twice", plugin);
    --quota.inUse;
    --locked->totalInUse;
    auto it = locked->owners.find(owner);
    if (it != locked->owners.end() && --it->second == 0) locked->owners.erase(it);
    grantWaiting(*locked, grants);
  }
  handOver(grants);
}

void LeaseTable::grantWaiting(State& s, kj::Vector<kj::Own<Ticket>>& grants) {
  auto at = now();
  for (auto it = s.waiters.begin(); it != s.waiters.end();) {
    auto& ticket = **it;
    if (mayTake(s, ticket.plugin)) {
      take(s, ticket.plugin, ticket.owner);
      ticket.isGranted = true;
      auto waited = at - ticket.enqueued;
      s.waitTime += waited;
      if (waited > s.maxWait) s.maxWait = waited;
      grants.add(kj::mv(*it));
      it = s.waiters.erase(it);
    } else {
      ++it;
    }
  }
}

void LeaseTable::handOver(kj::Vector<kj::Own<Ticket>>& grants) {
  for (auto& ticket : grants) {
    auto callback = kj::mv(KJ_ASSERT_NONNULL(ticket->granted));
    ticket->granted = nullptr;
    Lease lease(*this, ticket->plugin, ticket->owner);
    KJ_IF_MAYBE (exception, kj::runCatchingExceptions([&]() { callback(kj::mv(lease)); })) {
      ticket->signal->reject(kj::mv(*exception));
    } else {
      ticket->signal->fulfill();
    }
  }
}

LeaseTable::OwnerReport LeaseTable::cancelOwner(uint64_t owner) {
  kj::Vector<kj::Own<Ticket>> dropped;
  uint32_t held = 0;
  {
    auto locked = state.lockExclusive();
    for (auto it = locked->waiters.begin(); it != locked->waiters.end();) {
      if ((*it)->owner == owner) {
        (*it)->cancelled = true;
        dropped.add(kj::mv(*it));
        it = locked->waiters.erase(it);
      } else {
        ++it;
      }
    }
    auto it = locked->owners.find(owner);
    if (it != locked->owners.end()) held = it->second;
  }
  for (auto& ticket : dropped) {
    ticket->granted = nullptr;
    ticket->signal->reject(KJ_EXCEPTION(DISCONNECTED, "plugin version was unloaded while waiting",
                                        options.pool, ticket->plugin.c_str()));
  }
  return OwnerReport{static_cast<uint32_t>(dropped.size()), held};
}

LeaseTable::Stats LeaseTable::stats() const {
  auto locked = state.lockShared();
  return Stats{locked->totalInUse, static_cast<uint32_t>(locked->waiters.size()), locked->granted,
               locked->timeouts, locked->waitTime};
}

kj::Duration LeaseTable::takeMaxWait() {
  auto locked = state.lockExclusive();
  auto result = locked->maxWait;
  // Requests still in line count too: they have waited this long already.
  auto at = now();
  for (auto& ticket : locked->waiters) {
    auto waited = at - ticket->enqueued;
    if (waited > result) result = waited;
  }
  locked->maxWait = 0 * kj::NANOSECONDS;
  return result;
}

uint32_t LeaseTable::heldBy(kj::StringPtr plugin) const {
  auto locked = state.lockShared();
  auto it = locked->quotas.find(std::string(plugin.cStr()));
  return it == locked->quotas.end() ? 0 : it->second.inUse;
}

uint32_t LeaseTable::heldByOwner(uint64_t owner) const {
  auto locked = state.lockShared();
  auto it = locked->owners.find(owner);
  return it == locked->owners.end() ? 0 : it->second;
}

uint32_t LeaseTable::waitingForCapacity() const {
  // `mayTake` needs a mutable map only to default-construct quotas; read without it here.
  auto locked = state.lockShared();
  uint32_t count = 0;
  for (auto& ticket : locked->waiters) {
    auto it = locked->quotas.find(ticket->plugin);
    uint32_t inUse = it == locked->quotas.end() ? 0 : it->second.inUse;
    uint32_t limit =
        it == locked->quotas.end() || it->second.limit == 0 ? options.capacity : it->second.limit;
    if (inUse < limit) ++count;
  }
  return count;
}

}  // namespace payhost::host
