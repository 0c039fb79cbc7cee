#include "host/pools/worker-pool.h"

#include "host/util/errors.h"

#include <kj/debug.h>
#include <kj/vector.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <list>
#include <map>
#include <string>
#include <thread>

namespace payhost::host {

namespace asio = boost::asio;

namespace {

struct Quota {
  uint32_t reserve = 0;
  uint32_t limit = 0;  // 0: the capacity
  uint32_t inUse = 0;
};

// One call waiting for a lease: its work and where its outcome goes. Its flags are guarded by
// the pool's lock. Granting posts the work at once from the granting thread (no trip back to the
// caller's loop); the caller's loop only hears `granted`, in parallel, to stop its wait timer.
struct Ticket : public kj::AtomicRefcounted {
  std::string plugin;
  kj::Function<void()> work;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> granted;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> done;
  bool isGranted = false;
};

struct Waiter {
  std::string plugin;
  kj::Own<Ticket> ticket;
};

}  // namespace

class WorkerPool::Impl {
public:
  Impl(Options options, LogSink& log)
      : options(options), log(log), guard(asio::make_work_guard(io)), scaler(io) {
    KJ_REQUIRE(options.minThreads >= 1 && options.minThreads <= options.maxThreads,
               "worker pool bounds must satisfy 1 <= min <= max", options.minThreads,
               options.maxThreads);
    auto locked = state.lockExclusive();
    for (uint32_t i = 0; i < options.minThreads; ++i)
      startThread(*locked);
    scheduleScaling();
  }

  ~Impl() noexcept(false) {
    scaler.cancel();
    guard.reset();
    io.stop();
    // Threads finish the task they run (work in progress completes) and return.
    kj::Vector<std::thread> joining;
    {
      auto locked = state.lockExclusive();
      for (auto& thread : locked->threads)
        joining.add(kj::mv(thread));
      locked->threads.clear();
    }
    for (auto& thread : joining) {
      if (thread.joinable()) thread.join();
    }
  }

  struct State {
    std::map<std::string, Quota> quotas;
    std::list<Waiter> waiters;
    std::list<std::thread> threads;
    uint32_t threadCount = 0;
    uint32_t busy = 0;
    uint32_t totalInUse = 0;
    uint32_t exitsPending = 0;
    uint32_t peakBusy = 0;
    uint64_t completed = 0;
    uint64_t timeouts = 0;
    uint64_t grown = 0;
    uint64_t shrunk = 0;
  };

  kj::Promise<void> run(kj::StringPtr plugin, kj::Timer& timer, kj::Function<void()> work) {
    auto name = std::string(plugin.cStr());
    auto done = kj::newPromiseAndCrossThreadFulfiller<void>();
    auto locked = state.lockExclusive();
    // First come, first served: nobody overtakes a waiter of the same plugin.
    bool queued = false;
    for (auto& waiter : locked->waiters)
      queued = queued || waiter.plugin == name;
    if (!queued && mayTake(*locked, name)) {
      take(*locked, name);
      post(name, kj::mv(work), kj::mv(done.fulfiller));
      return kj::mv(done.promise);
    }
    auto granted = kj::newPromiseAndCrossThreadFulfiller<void>();
    auto& quota = locked->quotas[name];
    auto inUse = quota.inUse;
    auto limit = quota.limit == 0 ? options.maxThreads : quota.limit;
    auto ticket = kj::atomicRefcounted<Ticket>();
    ticket->plugin = name;
    ticket->work = kj::mv(work);
    ticket->granted = kj::mv(granted.fulfiller);
    ticket->done = kj::mv(done.fulfiller);
    locked->waiters.push_back(Waiter{name, kj::atomicAddRef(*ticket)});
    // A caller that gives up before the grant leaves the line; after the grant the work runs
    // anyway (its lease comes back when it ends).
    auto leave = kj::defer([this, ticket = kj::atomicAddRef(*ticket)]() {
      auto relocked = state.lockExclusive();
      if (!ticket->isGranted) {
        relocked->waiters.remove_if(
            [&](const Waiter& w) { return w.ticket.get() == ticket.get(); });
      }
    });
    auto wait = options.leaseWait;
    return granted.promise.then([]() { return true; })
        .exclusiveJoin(timer.afterDelay(wait).then([]() { return false; }))
        .then([this, ticket = kj::mv(ticket), done = kj::mv(done.promise), name, inUse, limit,
               wait](bool grantedInTime) mutable -> kj::Promise<void> {
          auto relocked = state.lockExclusive();
          // Decided under the lock: a grant racing the timer either happened (wait for the
          // work) or never will (this call leaves the line).
          if (grantedInTime || ticket->isGranted) return kj::mv(done);
          relocked->waiters.remove_if(
              [&](const Waiter& w) { return w.ticket.get() == ticket.get(); });
          relocked->timeouts++;
          return KJ_EXCEPTION(
              OVERLOADED,
              kj::str("plugin ", name.c_str(), ": worker pool quota exhausted (", inUse, " of ",
                      limit, " leases in use); waited ", wait / kj::MILLISECONDS, " ms"));
        })
        .attach(kj::mv(leave));
  }

  void setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit) {
    auto locked = state.lockExclusive();
    uint32_t reserved = reserve;
    for (auto& [name, quota] : locked->quotas) {
      if (name != plugin.cStr()) reserved += quota.reserve;
    }
    if (reserved > options.maxThreads) {
      PAYHOST_FAIL(FAILED, "worker pool: reservations (", reserved, ") exceed its capacity (",
                   options.maxThreads, " threads) with plugin ", plugin);
    }
    if (limit != 0 && limit < reserve) {
      PAYHOST_FAIL(FAILED, "worker pool: plugin ", plugin, "'s limit (", limit,
                   ") is below its reservation (", reserve, ")");
    }
    auto& quota = locked->quotas[std::string(plugin.cStr())];
    quota.reserve = reserve;
    quota.limit = limit;
  }

  Stats stats() const {
    auto locked = state.lockShared();
    return Stats{
        locked->threadCount, locked->busy,     static_cast<uint32_t>(locked->waiters.size()),
        locked->completed,   locked->timeouts, locked->grown,
        locked->shrunk};
  }

  uint32_t leasesHeld(kj::StringPtr plugin) const {
    auto locked = state.lockShared();
    auto it = locked->quotas.find(std::string(plugin.cStr()));
    return it == locked->quotas.end() ? 0 : it->second.inUse;
  }

private:
  Options options;
  LogSink& log;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard;
  asio::steady_timer scaler;
  kj::MutexGuarded<State> state;

  bool mayTake(State& s, const std::string& plugin) {
    auto& quota = s.quotas[plugin];
    uint32_t limit = quota.limit == 0 ? options.maxThreads : quota.limit;
    if (quota.inUse >= limit) return false;
    if (quota.inUse < quota.reserve) return true;
    // Capacity left once everyone's unused reservations are held back.
    uint32_t heldBack = 0;
    for (auto& [name, other] : s.quotas) {
      if (other.inUse < other.reserve) heldBack += other.reserve - other.inUse;
    }
    return s.totalInUse + heldBack < options.maxThreads;
  }

  void take(State& s, const std::string& plugin) {
    ++s.quotas[plugin].inUse;
    ++s.totalInUse;
  }

  void post(const std::string& plugin, kj::Function<void()> work,
            kj::Own<kj::CrossThreadPromiseFulfiller<void>> done) {
    asio::post(io, [this, plugin, work = kj::mv(work), done = kj::mv(done)]() mutable {
      execute(plugin, work, *done);
    });
  }

  void release(State& s, const std::string& plugin) {
    --s.quotas[plugin].inUse;
    --s.totalInUse;
    grantWaiting(s);
  }

  // Grants leases to waiters that may now take one, in order. Called with the lock held.
  void grantWaiting(State& s) {
    for (auto it = s.waiters.begin(); it != s.waiters.end();) {
      if (mayTake(s, it->plugin)) {
        take(s, it->plugin);
        auto& ticket = *it->ticket;
        ticket.isGranted = true;
        ticket.granted->fulfill();
        post(ticket.plugin, kj::mv(ticket.work), kj::mv(ticket.done));
        it = s.waiters.erase(it);
      } else {
        ++it;
      }
    }
  }

  void execute(const std::string& plugin, kj::Function<void()>& work,
               kj::CrossThreadPromiseFulfiller<void>& done) {
    {
      auto locked = state.lockExclusive();
      ++locked->busy;
      if (locked->busy > locked->peakBusy) locked->peakBusy = locked->busy;
      if (locked->busy >= locked->threadCount && locked->threadCount < options.maxThreads) {
        startThread(*locked);
        ++locked->grown;
        auto threads = kj::str(locked->threadCount);
        LogField fields[] = {{"pool", "workers"}, {"threads", threads}, {"reason", "all busy"}};
        log.write(LogLevel::INFO, "pool.grow", nullptr, fields);
      }
    }
    auto failure = kj::runCatchingExceptions([&]() { work(); });
    // The function (and what it captured, possibly plugin code) goes before the lease does, and
    // the lease before the caller hears back: a caller that offloads again at once finds it free.
    { auto gone = kj::mv(work); }
    {
      auto locked = state.lockExclusive();
      --locked->busy;
      ++locked->completed;
      release(*locked, plugin);
    }
    KJ_IF_MAYBE (exception, failure) {
      done.reject(kj::mv(*exception));
    } else {
      done.fulfill();
    }
  }

  void startThread(State& s) {
    ++s.threadCount;
    s.threads.emplace_back([this]() { threadMain(); });
  }

  void threadMain() {
    while (!io.stopped()) {
      io.run_one();
      auto locked = state.lockExclusive();
      if (locked->exitsPending > 0) {
        --locked->exitsPending;
        --locked->threadCount;
        // Detach ourselves: the pool no longer joins this thread.
        auto self = std::this_thread::get_id();
        for (auto it = locked->threads.begin(); it != locked->threads.end(); ++it) {
          if (it->get_id() == self) {
            it->detach();
            locked->threads.erase(it);
            break;
          }
        }
        return;
      }
    }
  }

  void scheduleScaling() {
    scaler.expires_after(std::chrono::nanoseconds(options.scaleInterval / kj::NANOSECONDS));
    scaler.async_wait([this](const boost::system::error_code& error) {
      if (error) return;
      {
        auto locked = state.lockExclusive();
        uint32_t threads = locked->threadCount - locked->exitsPending;
        if (locked->peakBusy * 2 < threads && threads > options.minThreads) {
          ++locked->exitsPending;
          ++locked->shrunk;
          auto remaining = kj::str(threads - 1);
          auto peak = kj::str(locked->peakBusy);
          LogField fields[] = {{"pool", "workers"}, {"threads", remaining}, {"peak_busy", peak}};
          log.write(LogLevel::INFO, "pool.shrink", nullptr, fields);
          // Wakes one thread so it sees the exit.
          asio::post(io, []() {});
        }
        locked->peakBusy = locked->busy;
      }
      scheduleScaling();
    });
  }
};

WorkerPool::WorkerPool(Options options, LogSink& log) : impl(kj::heap<Impl>(options, log)) {}
WorkerPool::~WorkerPool() noexcept(false) = default;

void WorkerPool::setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit) {
  impl->setQuota(plugin, reserve, limit);
}

kj::Promise<void> WorkerPool::run(kj::StringPtr plugin, kj::Timer& timer,
                                  kj::Function<void()> work) {
  return impl->run(plugin, timer, kj::mv(work));
}

WorkerPool::Stats WorkerPool::stats() const {
  return impl->stats();
}

uint32_t WorkerPool::leasesHeld(kj::StringPtr plugin) const {
  return impl->leasesHeld(plugin);
}

}  // namespace payhost::host
