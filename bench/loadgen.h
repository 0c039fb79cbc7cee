// Drives load against anything that can be called from a KJ event loop, for the benchmark tools.
//
// The caller supplies `issue`: a function that starts one call and returns the promise of its
// completion (a rejected promise, or an exception thrown by `issue` itself, is a failed call).
// The generator decides when to call it and measures, with `kj::systemPreciseMonotonicClock()`:
// - closed loop: keeps `concurrency` calls in flight, issuing the next as soon as one completes;
//   latency counts from the moment the call was issued.
// - open loop: issues calls on a fixed schedule, `rate` per second, whatever the callee does;
//   latency counts from each call's scheduled start, so a callee (or a client loop) that falls
//   behind shows up in the latency instead of silently lowering the rate (no coordinated
//   omission). A call due while `maxOutstanding` calls are outstanding is dropped: counted in
//   `failed` and `dropped`, never queued.
//   KJ 0.9's event loop sleeps in whole milliseconds (epoll_wait), so calls go out up to about
//   1 ms after their scheduled start and that lag is in their latency: with a callee that
//   returns at once, open-loop p50 is about 0.6 ms at any rate. Read open-loop percentiles below
//   a few milliseconds with that in mind.
//   TODO(perf): wake on a timerfd (LowLevelAsyncIoProvider::wrapInputFd) for microsecond
//   precision.
//
// A run is a warm-up, whose calls are issued but not recorded, then the measured window. A call
// is measured when it starts (closed loop) or is scheduled (open loop) inside the window; every
// measured call ends up in `completed` or `failed`. After the window no new calls start; the run
// waits for the outstanding ones for at most `drainTimeout`, then cancels them and counts the
// measured ones as failed.
//
// Shard-local: the generator, `issue` and every promise they return belong to the thread whose
// event loop owns `timer`.

#pragma once

#include "bench/histogram.h"

#include <kj/async.h>
#include <kj/function.h>
#include <kj/string.h>
#include <kj/time.h>
#include <kj/timer.h>

#include <cstdint>

namespace payhost::bench {

struct LoadResult {
  // Measured calls that succeeded, and those that failed (thrown, rejected, dropped, or cancelled
  // at the drain timeout).
  uint64_t completed = 0;
  uint64_t failed = 0;
  // Of `failed`: open-loop calls never issued because `maxOutstanding` were outstanding.
  uint64_t dropped = 0;
  // The description of the first failure, if any.
  kj::Maybe<kj::String> firstError;
  // From the start of the measured window to the end of the run (the drain included).
  double elapsedSeconds = 0;
  // completed / elapsedSeconds.
  double callsPerSecond = 0;
  // Latency of each completed measured call, in nanoseconds. Failed calls are not in it.
  Histogram latency;
};

struct ClosedLoopOptions {
  // Calls kept in flight; at least 1.
  uint32_t concurrency = 1;
  kj::Duration duration = 1 * kj::SECONDS;
  kj::Duration warmUp = 0 * kj::SECONDS;
  kj::Duration drainTimeout = 10 * kj::SECONDS;
};

struct OpenLoopOptions {
  // Calls per second; above 0 and finite. The i-th call is scheduled at start + i / rate.
  double rate = 1000;
  kj::Duration duration = 1 * kj::SECONDS;
  kj::Duration warmUp = 0 * kj::SECONDS;
  // At least 1.
  uint32_t maxOutstanding = 1000;
  kj::Duration drainTimeout = 10 * kj::SECONDS;
};

// Shard-local. Holds no state between runs; several runs may share one generator, at once or not.
class LoadGenerator final {
public:
  // `timer` is the event loop's timer (`kj::AsyncIoProvider::getTimer()`), which follows
  // `kj::systemPreciseMonotonicClock()`; it must outlive every promise returned here.
  explicit LoadGenerator(kj::Timer& timer) : timer(timer) {}
  KJ_DISALLOW_COPY(LoadGenerator);

  // Start a run at once. `issue` is kept until the returned promise is destroyed; destroying it
  // before it resolves cancels the run and the calls in flight.
  [[nodiscard]] kj::Promise<LoadResult> runClosedLoop(const ClosedLoopOptions& options,
                                                      kj::Function<kj::Promise<void>()> issue);
  [[nodiscard]] kj::Promise<LoadResult> runOpenLoop(const OpenLoopOptions& options,
                                                    kj::Function<kj::Promise<void>()> issue);

private:
  kj::Timer& timer;
};

}  // namespace payhost::bench
