// The gRPC side of the benchmark suite's load generator: a closed loop of authorize calls over
// gRPC's callback API, with the loadgen's semantics (see bench/loadgen.h): `inFlight` calls kept in
// flight on each of `connections` channels, latency from issue to completion, a warm-up whose
// calls are not recorded, then a measured window; calls started in the window are measured.
//
// Blocking: call from any thread; gRPC runs the completions on its own threads.

#pragma once

#include "bench/loadgen.h"

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace payhost::bench {

// `address` as gRPC takes it: "127.0.0.1:PORT" or "unix:/path". `onWindowStart` is called on the
// calling thread when the warm-up ends (the suite samples CPU counters there).
LoadResult runGrpcClosedLoop(const std::string& address, uint32_t connections, uint32_t inFlight,
                             std::chrono::nanoseconds warmUp, std::chrono::nanoseconds duration,
                             const std::function<void()>& onWindowStart);

}  // namespace payhost::bench
