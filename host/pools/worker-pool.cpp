#include "host/pools/worker-pool.h"

#include "host/pools/lease-table.h"
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

// One piece of offloaded work from its grant until it ran (or was dropped). `started` and
// `cancelled` are guarded by the pool's lock.
struct Job : public kj::AtomicRefcounted {
  std::string plugin;
  uint64_t owner = 0;
  kj::Function<void()> work;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> done;
  kj::Maybe<LeaseTable::Lease> lease;
  bool started = false;
  bool cancelled = false;
};

LeaseTable::Options leaseOptions(const WorkerPool::Options& options) {
  LeaseTable::Options result;
  result.pool = kj::str("worker pool");
  result.unit = kj::str("leases");
  result.capacityUnit = kj::str("threads");
  result.capacity = options.maxThreads;
  result.wait = options.leaseWait;
  return result;
}

}  // namespace

class WorkerPool::Impl {
public:
  Impl(Options options, LogSink& log)
      : options(options),
        log(log),
        leases(leaseOptions(options)),
        guard(asio::make_work_guard(io)),
        scaler(io) {
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
      // Work never started goes with the io_context's handlers.
      locked->queued.clear();
    }
    for (auto& thread : joining) {
      if (thread.joinable()) thread.join();
    }
  }

  struct State {
    // Granted and posted, not started yet.
    std::list<kj::Own<Job>> queued;
    std::map<uint64_t, uint32_t> runningByOwner;
    std::list<std::thread> threads;
    uint32_t threadCount = 0;
    uint32_t busy = 0;
    uint32_t exitsPending = 0;
    uint32_t peakBusy = 0;
    uint64_t completed = 0;
    uint64_t grown = 0;
    uint64_t shrunk = 0;
  };

  kj::Promise<void> run(kj::StringPtr plugin, kj::Timer& timer, kj::Function<void()> work,
                        uint64_t owner) {
    auto done = kj::newPromiseAndCrossThreadFulfiller<void>();
    auto job = kj::atomicRefcounted<Job>();
    job->plugin = std::string(plugin.cStr());
    job->owner = owner;
    job->work = kj::mv(work);
    job->done = kj::mv(done.fulfiller);
    // Granting posts the work at once from the granting thread (no trip back to the caller's
    // loop); the caller's loop only hears of the grant, to stop its wait timer. A caller that
    // gives up before the grant drops the work unrun; after the grant the work runs anyway.
    return leases
        .acquireThen(plugin, timer, owner,
                     [this, job = kj::mv(job)](LeaseTable::Lease lease) mutable {
                       post(kj::mv(job), kj::mv(lease));
                     })
        .then([done = kj::mv(done.promise)]() mutable { return kj::mv(done); });
  }

  void setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit) {
    leases.setQuota(plugin, reserve, limit);
  }

  Stats stats() const {
    auto table = leases.stats();
    auto locked = state.lockShared();
    return Stats{locked->threadCount, locked->busy,  table.waiting, locked->completed,
                 table.timeouts,      locked->grown, locked->shrunk};
  }

  uint32_t leasesHeld(kj::StringPtr plugin) const { return leases.heldBy(plugin); }
  uint32_t leasesHeldByOwner(uint64_t owner) const { return leases.heldByOwner(owner); }

  Reclaimed reclaim(uint64_t owner) {
    auto waiting = leases.cancelOwner(owner).waitersCancelled;
    kj::Vector<kj::Own<Job>> dropped;
    uint32_t running = 0;
    {
      auto locked = state.lockExclusive();
      for (auto it = locked->queued.begin(); it != locked->queued.end();) {
        if ((*it)->owner == owner) {
          (*it)->cancelled = true;
          dropped.add(kj::mv(*it));
          it = locked->queued.erase(it);
        } else {
          ++it;
        }
      }
      auto it = locked->runningByOwner.find(owner);
      if (it != locked->runningByOwner.end()) running = it->second;
    }
    // Outside the lock: destroying the work runs plugin destructors, and giving back a lease
    // may grant (and post) another plugin's work.
    for (auto& job : dropped) {
      { auto gone = kj::mv(job->work); }
      job->lease = nullptr;
      job->done->reject(KJ_EXCEPTION(DISCONNECTED,
                                     "offloaded work dropped unrun: plugin version "
                                     "was unloaded",
                                     job->plugin.c_str()));
    }
    return Reclaimed{waiting, static_cast<uint32_t>(dropped.size()), running};
  }

private:
  Options options;
  LogSink& log;
  // Before `io`: handlers destroyed with the io_context give their leases back to it.
  LeaseTable leases;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard;
  asio::steady_timer scaler;
  kj::MutexGuarded<State> state;

  void post(kj::Own<Job> job, LeaseTable::Lease lease) {
    job->lease = kj::mv(lease);
    state.lockExclusive()->queued.push_back(kj::atomicAddRef(*job));
    asio::post(io, [this, job = kj::mv(job)]() mutable { execute(*job); });
  }

  void execute(Job& job) {
    {
      auto locked = state.lockExclusive();
      if (job.cancelled) return;
      job.started = true;
      locked->queued.remove_if([&](const kj::Own<Job>& queued) { return queued.get() == &job; });
      ++locked->runningByOwner[job.owner];
      ++locked->busy;
      if (locked->busy > locked->peakBusy) locked->peakBusy = locked->busy;
      if (locked->busy >= locked->threadCount && locked->threadCount < options.maxThreads) {
        auto before = kj::str(locked->threadCount);
        startThread(*locked);
        ++locked->grown;
        auto threads = kj::str(locked->threadCount);
        LogField fields[] = {{"pool", "workers"},
                             {"from", before},
                             {"to", threads},
                             {"threads", threads},
                             {"reason", "all busy"}};
        log.write(LogLevel::INFO, "pool.grow", nullptr, fields);
      }
    }
    auto failure = kj::runCatchingExceptions([&]() { job.work(); });
    // The function (and what it captured, possibly plugin code) goes before the lease does, and
    // the lease before the caller hears back: a caller that offloads again at once finds it free.
    { auto gone = kj::mv(job.work); }
    {
      auto locked = state.lockExclusive();
      --locked->busy;
      ++locked->completed;
      auto it = locked->runningByOwner.find(job.owner);
      if (it != locked->runningByOwner.end() && --it->second == 0) {
        locked->runningByOwner.erase(it);
      }
    }
    job.lease = nullptr;
    KJ_IF_MAYBE (exception, failure) {
      job.done->reject(kj::mv(*exception));
    } else {
      job.done->fulfill();
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
          auto before = kj::str(threads);
          auto remaining = kj::str(threads - 1);
          auto peak = kj::str(locked->peakBusy);
          auto reason = kj::str("peak busy ", locked->peakBusy, " under half of ", threads);
          LogField fields[] = {{"pool", "workers"},    {"from", before},    {"to", remaining},
                               {"threads", remaining}, {"peak_busy", peak}, {"reason", reason}};
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

kj::Promise<void> WorkerPool::run(kj::StringPtr plugin, kj::Timer& timer, kj::Function<void()> work,
                                  uint64_t owner) {
  return impl->run(plugin, timer, kj::mv(work), owner);
}

WorkerPool::Reclaimed WorkerPool::reclaim(uint64_t owner) {
  return impl->reclaim(owner);
}

uint32_t WorkerPool::leasesHeldByOwner(uint64_t owner) const {
  return impl->leasesHeldByOwner(owner);
}

WorkerPool::Stats WorkerPool::stats() const {
  return impl->stats();
}

uint32_t WorkerPool::leasesHeld(kj::StringPtr plugin) const {
  return impl->leasesHeld(plugin);
}

}  // namespace payhost::host
