#include "bench/loadgen.h"

#include <kj/debug.h>

#include <algorithm>
#include <cmath>

namespace payhost::bench {

namespace {

using IssueFunction = kj::Function<kj::Promise<void>()>;

uint64_t toNanos(kj::Duration duration) {
  return static_cast<uint64_t>(std::max<int64_t>(duration / kj::NANOSECONDS, 0));
}

// The state of one run. It is attached to the run's promise, and everything that captures `this`
// is owned by that promise or by `tasks`, so no continuation outlives it.
class Run final : private kj::TaskSet::ErrorHandler {
public:
  Run(kj::Timer& timer, IssueFunction issue, kj::Duration warmUp, kj::Duration duration,
      kj::Duration drainTimeout)
      : timer(timer),
        clock(kj::systemPreciseMonotonicClock()),
        issue(kj::mv(issue)),
        start(clock.now()),
        windowStart(start + warmUp),
        windowEnd(windowStart + duration),
        drainTimeout(drainTimeout) {}
  KJ_DISALLOW_COPY(Run);

  kj::Promise<LoadResult> closedLoop(uint32_t concurrency) {
    auto workers = kj::heapArrayBuilder<kj::Promise<void>>(concurrency);
    for (uint32_t i = 0; i < concurrency; ++i) {
      workers.add(worker());
    }
    // A worker returns only once its last call is done, so when all have returned nothing is
    // outstanding.
    return drain(kj::joinPromises(workers.finish()));
  }

  kj::Promise<LoadResult> openLoop(double callsPerSecond, uint32_t outstandingCap) {
    rate = callsPerSecond;
    maxOutstanding = outstandingCap;
    tasks = kj::heap<kj::TaskSet>(static_cast<kj::TaskSet::ErrorHandler&>(*this));
    return drain(tick(0).then([this]() { return tasks->onEmpty(); }));
  }

private:
  kj::Timer& timer;
  const kj::MonotonicClock& clock;
  IssueFunction issue;
  const kj::TimePoint start;
  const kj::TimePoint windowStart;
  const kj::TimePoint windowEnd;
  const kj::Duration drainTimeout;
  double rate = 0;
  uint32_t maxOutstanding = 0;

  LoadResult result;
  uint64_t outstanding = 0;
  uint64_t outstandingMeasured = 0;
  // Open loop: the calls in flight. Last, so they are cancelled before `issue` is destroyed.
  kj::Own<kj::TaskSet> tasks;

  // Starts one call now and accounts for it when it ends; the promise never rejects.
  kj::Promise<void> call(kj::TimePoint intendedStart, bool measured) {
    ++outstanding;
    if (measured) ++outstandingMeasured;
    return kj::evalNow([this]() { return issue(); })
        .then(
            [this, intendedStart, measured]() {
              kj::TimePoint end = clock.now();
              --outstanding;
              if (!measured) return;
              --outstandingMeasured;
              ++result.completed;
              result.latency.record(toNanos(end - intendedStart));
            },
            [this, measured](kj::Exception&& exception) {
              --outstanding;
              if (!measured) return;
              --outstandingMeasured;
              fail(exception.getDescription());
            });
  }

  void fail(kj::StringPtr description, uint64_t calls = 1) {
    result.failed += calls;
    if (result.firstError == nullptr) result.firstError = kj::heapString(description);
  }

  // One closed-loop slot: issues calls back to back until the window ends.
  kj::Promise<void> worker() {
    kj::TimePoint now = clock.now();
    if (now >= windowEnd) return kj::READY_NOW;
    return call(now, now >= windowStart).then([this]() { return worker(); });
  }

  // Issues every open-loop call due by now, from call number `next` on, then sleeps until the
  // next one is due. Due times are computed from `start`, never from the previous wake-up, so a
  // late wake-up is caught up at once and does not shift the schedule.
  kj::Promise<void> tick(uint64_t next) {
    kj::TimePoint now = clock.now();
    for (;; ++next) {
      auto offset = static_cast<int64_t>(static_cast<double>(next) * 1e9 / rate);
      kj::TimePoint due = start + offset * kj::NANOSECONDS;
      if (due >= windowEnd) return kj::READY_NOW;
      if (due > now) {
        return timer.atTime(due).then([this, next]() { return tick(next); });
      }
      bool measured = due >= windowStart;
      if (outstanding < maxOutstanding) {
        tasks->add(call(due, measured));
      } else if (measured) {
        ++result.dropped;
        fail(kj::str("dropped: ", maxOutstanding, " calls already outstanding"));
      }
    }
  }

  // Waits for `allDone`, or until `drainTimeout` after the window, whichever comes first.
  kj::Promise<LoadResult> drain(kj::Promise<void> allDone) {
    return allDone.exclusiveJoin(timer.atTime(windowEnd + drainTimeout)).then([this]() {
      return finish();
    });
  }

  LoadResult finish() {
    // Calls still outstanding here missed the drain timeout. Cancel them first so that nothing
    // touches `result` once it is moved out.
    tasks = nullptr;
    if (outstandingMeasured > 0) {
      fail(kj::str(outstandingMeasured, " calls still outstanding at the drain timeout"),
           outstandingMeasured);
      outstandingMeasured = 0;
    }
    result.elapsedSeconds = static_cast<double>(toNanos(clock.now() - windowStart)) / 1e9;
    if (result.elapsedSeconds > 0) {
      result.callsPerSecond = static_cast<double>(result.completed) / result.elapsedSeconds;
    }
    return kj::mv(result);
  }

  void taskFailed(kj::Exception&& exception) override {
    // `call()` catches every failure of the call itself, so this is a bug in the accounting.
    KJ_LOG(ERROR, "load generator bookkeeping failed", exception);
  }
};

}  // namespace

kj::Promise<LoadResult> LoadGenerator::runClosedLoop(const ClosedLoopOptions& options,
                                                     IssueFunction issue) {
  KJ_REQUIRE(options.concurrency > 0, "closed loop needs at least one call in flight");
  KJ_REQUIRE(options.duration > 0 * kj::SECONDS, "duration must be positive");
  KJ_REQUIRE(options.warmUp >= 0 * kj::SECONDS, "warm-up must not be negative");
  KJ_REQUIRE(options.drainTimeout >= 0 * kj::SECONDS, "drain timeout must not be negative");
  auto run =
      kj::heap<Run>(timer, kj::mv(issue), options.warmUp, options.duration, options.drainTimeout);
  auto promise = run->closedLoop(options.concurrency);
  return promise.attach(kj::mv(run));
}

kj::Promise<LoadResult> LoadGenerator::runOpenLoop(const OpenLoopOptions& options,
                                                   IssueFunction issue) {
  KJ_REQUIRE(options.rate > 0 && std::isfinite(options.rate), "rate must be positive and finite",
             options.rate);
  KJ_REQUIRE(options.maxOutstanding > 0, "open loop needs room for at least one call");
  KJ_REQUIRE(options.duration > 0 * kj::SECONDS, "duration must be positive");
  KJ_REQUIRE(options.warmUp >= 0 * kj::SECONDS, "warm-up must not be negative");
  KJ_REQUIRE(options.drainTimeout >= 0 * kj::SECONDS, "drain timeout must not be negative");
  auto run =
      kj::heap<Run>(timer, kj::mv(issue), options.warmUp, options.duration, options.drainTimeout);
  auto promise = run->openLoop(options.rate, options.maxOutstanding);
  return promise.attach(kj::mv(run));
}

}  // namespace payhost::bench
