// The gRPC side of the benchmarks' load generator: closed loops of gRPC calls with the loadgen's
// semantics (see bench/loadgen.h): a number of calls kept in flight, latency from issue to
// completion, a warm-up whose calls are not recorded, then a measured window; calls started in
// the window are measured.
//
// Blocking: call `run` from any thread; gRPC runs the completions on its own threads.

#pragma once

#include "bench/loadgen.h"

#include <kj/string.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace payhost::bench {

// Any kind of gRPC call in a closed loop: `start(slot, sequence)` begins call number `sequence`
// (from 1) in `slot`, and whoever sees it complete calls `finish(slot, ...)` exactly once, on any
// thread; the loop then starts the slot's next call, until the window ends.
class GrpcClosedLoop final {
public:
  using Start = std::function<void(size_t slot, uint64_t sequence)>;

  // `start` must stay valid until `run` returns.
  GrpcClosedLoop(size_t slots, Start start);
  KJ_DISALLOW_COPY(GrpcClosedLoop);

  // Runs the warm-up and the window and waits for every call. `onWindowStart` is called on the
  // calling thread when the warm-up ends (the benchmarks sample CPU counters there).
  LoadResult run(std::chrono::nanoseconds warmUp, std::chrono::nanoseconds duration,
                 const std::function<void()>& onWindowStart);

  // The call in `slot` completed; `ok` false counts it failed, with `error` (first one kept).
  void finish(size_t slot, bool ok, kj::StringPtr error);

private:
  using Clock = std::chrono::steady_clock;

  Start start;
  std::vector<Clock::time_point> started;
  Clock::time_point windowStart;
  Clock::time_point windowEnd;
  std::atomic<uint64_t> sequence{0};
  std::mutex mutex;
  std::condition_variable done;
  size_t active = 0;
  LoadResult result;

  void next(size_t slot);
};

// Authorize calls to authorize.proto's CardProcessor: `inFlight` kept in flight on each of
// `connections` channels. `address` as gRPC takes it: "127.0.0.1:PORT" or "unix:/path".
LoadResult runGrpcClosedLoop(const std::string& address, uint32_t connections, uint32_t inFlight,
                             std::chrono::nanoseconds warmUp, std::chrono::nanoseconds duration,
                             const std::function<void()>& onWindowStart);

}  // namespace payhost::bench
