// payhost-pool-bench: what a plugin pays to run work on the host's worker pool
// (`Context::offload`) beside calling the same function inline, in one run.
//
//   payhost-pool-bench [--rounds 5] [--calls 20000]
//
// Cases, interleaved per round (inline, offload 1 in flight, offload 64 in flight):
//   inline      the work called directly on the event loop thread
//   offload x1  WorkerPool::run, one at a time: lease, post to a worker, run, release, resolve
//               back on the loop (the full round trip a plugin waits for)
//   offload x64 64 offloads in flight: throughput of the pool
// The work is a small computation (a 64-round integer mix), so the figures are the pool's cost.

#include "host/config/daemon-config.h"
#include "host/log/logger.h"
#include "host/pools/worker-pool.h"

#include <kj/async-io.h>
#include <kj/debug.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <vector>

namespace payhost::bench {
namespace {

std::atomic<uint64_t> sink{0};

void work(uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 64; ++i)
    x = x * 6364136223846793005ull + 1442695040888963407ull;
  sink.fetch_add(x, std::memory_order_relaxed);
}

double nanosSince(kj::TimePoint start) {
  return static_cast<double>((kj::systemPreciseMonotonicClock().now() - start) / kj::NANOSECONDS);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace
}  // namespace payhost::bench

int main(int argc, char** argv) {
  using namespace payhost;
  using namespace payhost::bench;
  CLI::App app{"payhost-pool-bench: offload round trip beside an inline call"};
  int rounds = 5;
  int calls = 20000;
  app.add_option("--rounds", rounds)->capture_default_str();
  app.add_option("--calls", calls, "calls per case and round")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto io = kj::setupAsyncIo();
  host::LogSink log(LogLevel::ERROR, host::LogFormat::LOGFMT);
  host::WorkerPool::Options options;
  options.minThreads = 2;
  options.maxThreads = 2;
  host::WorkerPool pool(options, log);
  auto& timer = io.provider->getTimer();

  std::vector<double> inlineNs, oneNs, manyNs;
  for (int round = 0; round < rounds; ++round) {
    auto start = kj::systemPreciseMonotonicClock().now();
    for (int i = 0; i < calls; ++i)
      work(i);
    inlineNs.push_back(nanosSince(start) / calls);

    start = kj::systemPreciseMonotonicClock().now();
    for (int i = 0; i < calls; ++i) {
      pool.run("bench", timer, [i]() { work(i); }).wait(io.waitScope);
    }
    oneNs.push_back(nanosSince(start) / calls);

    start = kj::systemPreciseMonotonicClock().now();
    int issued = 0;
    kj::Function<kj::Promise<void>()> next;
    next = [&]() -> kj::Promise<void> {
      if (issued >= calls) return kj::READY_NOW;
      int i = issued++;
      return pool.run("bench", timer, [i]() { work(i); }).then([&]() { return next(); });
    };
    kj::Vector<kj::Promise<void>> lanes;
    for (int lane = 0; lane < 64; ++lane)
      lanes.add(next());
    kj::joinPromises(lanes.releaseAsArray()).wait(io.waitScope);
    manyNs.push_back(nanosSince(start) / calls);
  }
  printf("payhost-pool-bench: %d rounds of %d calls per case, interleaved; medians\n", rounds,
         calls);
  printf("  inline              %9.1f ns per call\n", median(inlineNs));
  printf("  offload, 1 in flight %8.1f ns per call (round trip)  ratio %.0fx inline\n",
         median(oneNs), median(oneNs) / median(inlineNs));
  printf("  offload, 64 in flight %7.1f ns per call (%.0f calls/s)  ratio %.0fx inline\n",
         median(manyNs), 1e9 / median(manyNs), median(manyNs) / median(inlineNs));
  printf("  pool: %u threads, %llu completed, %llu lease timeouts\n", pool.stats().threads,
         (unsigned long long)pool.stats().completed, (unsigned long long)pool.stats().timeouts);
  return 0;
}
