#include "bench/loadgen.h"

#include <kj/async-io.h>
#include <kj/debug.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

// Every test runs a real event loop with real time. The machine has two shared cores, so timing
// bounds are generous; the counts that do not depend on timing are checked exactly.

namespace payhost::bench {
namespace {

// A callee that takes `delay` per call and records how many calls it has at once.
class FakeCallee {
public:
  FakeCallee(kj::Timer& timer, kj::Duration delay) : timer(timer), delay(delay) {}

  kj::Function<kj::Promise<void>()> issueFunction() {
    return [this]() { return call(); };
  }

  kj::Promise<void> call() {
    ++issued;
    ++inFlight;
    maxInFlight = std::max(maxInFlight, inFlight);
    issueTimes.push_back(kj::systemPreciseMonotonicClock().now());
    return timer.afterDelay(delay).then([this]() { --inFlight; });
  }

  kj::Timer& timer;
  kj::Duration delay;
  uint64_t issued = 0;
  uint64_t inFlight = 0;
  uint64_t maxInFlight = 0;
  std::vector<kj::TimePoint> issueTimes;
};

double seconds(kj::Duration duration) {
  return static_cast<double>(duration / kj::NANOSECONDS) / 1e9;
}

TEST(LoadGenerator, ClosedLoopKeepsExactlyNInFlight) {
  auto io = kj::setupAsyncIo();
  auto& timer = io.provider->getTimer();
  FakeCallee callee(timer, 5 * kj::MILLISECONDS);
  LoadGenerator generator(timer);

  // All eight slots are filled before the first call is even waited for.
  auto promise = generator.runClosedLoop({.concurrency = 8, .duration = 300 * kj::MILLISECONDS},
                                         callee.issueFunction());
  EXPECT_EQ(callee.inFlight, 8u);
  LoadResult result = promise.wait(io.waitScope);

  EXPECT_EQ(callee.maxInFlight, 8u);
  EXPECT_EQ(callee.inFlight, 0u);
  EXPECT_EQ(result.failed, 0u);
  EXPECT_TRUE(result.firstError == nullptr);
  // Without warm-up every call is measured.
  EXPECT_EQ(result.completed, callee.issued);
  EXPECT_EQ(result.latency.count(), result.completed);
  // Eight slots of 5 ms calls for 0.3 s: at most 8 * 60 + 8 calls; a slot that was idle
  // for long stretches would fall far short of that.
  EXPECT_LE(result.completed, 8u * 60 + 8);
  EXPECT_GE(result.completed, 8u * 60 / 4);
  // Not min(): `afterDelay` counts from the loop's last wake-up, which may be well before the
  // call when the process was preempted in between.
  EXPECT_GE(result.latency.percentile(50), 3'000'000u);
  EXPECT_GE(result.elapsedSeconds, 0.3);
  EXPECT_LT(result.elapsedSeconds, 1.5);
  EXPECT_NEAR(result.callsPerSecond, result.completed / result.elapsedSeconds, 1e-6);
}

TEST(LoadGenerator, ClosedLoopDoesNotRecordWarmUp) {
  auto io = kj::setupAsyncIo();
  auto& timer = io.provider->getTimer();
  FakeCallee callee(timer, 2 * kj::MILLISECONDS);
  LoadGenerator generator(timer);

  LoadResult result = generator
                          .runClosedLoop({.concurrency = 2,
                                          .duration = 200 * kj::MILLISECONDS,
                                          .warmUp = 200 * kj::MILLISECONDS},
                                         callee.issueFunction())
                          .wait(io.waitScope);

  EXPECT_EQ(callee.maxInFlight, 2u);
  EXPECT_EQ(result.failed, 0u);
  EXPECT_GT(result.completed, 0u);
  EXPECT_EQ(result.latency.count(), result.completed);
  // Roughly half the calls fell in the warm-up. The split is by time, so only bound it loosely.
  EXPECT_LT(result.completed, callee.issued * 4 / 5);
  EXPECT_GT(result.completed, callee.issued / 5);
  // Elapsed counts from the end of the warm-up.
  EXPECT_GE(result.elapsedSeconds, 0.2);
  EXPECT_LT(result.elapsedSeconds, 1.0);
}

TEST(LoadGenerator, ClosedLoopCountsFailures) {
  auto io = kj::setupAsyncIo();
  auto& timer = io.provider->getTimer();
  LoadGenerator generator(timer);

  // Of every three calls: one succeeds, one throws before returning a promise, one rejects.
  uint64_t issued = 0;
  auto issue = [&]() -> kj::Promise<void> {
    uint64_t n = issued++;
    if (n % 3 == 1) KJ_FAIL_REQUIRE("thrown by issue", n);
    return timer.afterDelay(1 * kj::MILLISECONDS).then([n]() {
      if (n % 3 == 2) kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED, "rejected", n));
    });
  };
  LoadResult result =
      generator.runClosedLoop({.concurrency = 4, .duration = 100 * kj::MILLISECONDS}, kj::mv(issue))
          .wait(io.waitScope);

  EXPECT_EQ(result.completed + result.failed, issued);
  EXPECT_EQ(result.completed, (issued + 2) / 3);
  EXPECT_EQ(result.dropped, 0u);
  EXPECT_EQ(result.latency.count(), result.completed);
  KJ_IF_MAYBE (error, result.firstError) {
    // Call 1 throws at once, before any rejection can arrive.
    EXPECT_TRUE(error->startsWith("thrown by issue")) << error->cStr();
  } else {
    ADD_FAILURE() << "no error kept";
  }
}

TEST(LoadGenerator, ClosedLoopFailsCallsThatMissTheDrainTimeout) {
  auto io = kj::setupAsyncIo();
  auto& timer = io.provider->getTimer();
  LoadGenerator generator(timer);

  uint64_t issued = 0;
  uint64_t cancelled = 0;
  auto issue = [&]() -> kj::Promise<void> {
    ++issued;
    return kj::Promise<void>(kj::NEVER_DONE).attach(kj::defer([&]() { ++cancelled; }));
  };
  LoadResult result = generator
                          .runClosedLoop({.concurrency = 3,
                                          .duration = 50 * kj::MILLISECONDS,
                                          .drainTimeout = 100 * kj::MILLISECONDS},
                                         kj::mv(issue))
                          .wait(io.waitScope);

  EXPECT_EQ(issued, 3u);
  EXPECT_EQ(cancelled, 3u);
  EXPECT_EQ(result.completed, 0u);
  EXPECT_EQ(result.failed, 3u);
  EXPECT_EQ(result.latency.count(), 0u);
  EXPECT_GE(result.elapsedSeconds, 0.15);
  KJ_IF_MAYBE (error, result.firstError) {
    EXPECT_TRUE(error->startsWith("3 calls")) << error->cStr();
  } else {
    ADD_FAILURE() << "no error kept";
  }
}

TEST(LoadGenerator, OpenLoopIssuesAtTheRequestedRate) {
  auto io = kj::setupAsyncIo();
  auto& timer = io.provider->getTimer();
  FakeCallee callee(timer, 1 * kj::MILLISECONDS);
  LoadGenerator generator(timer);

  auto before = kj::systemPreciseMonotonicClock().now();
  LoadResult result =
      generator
          .runOpenLoop({.rate = 400, .duration = 500 * kj::MILLISECONDS}, callee.issueFunction())
          .wait(io.waitScope);

  // The schedule is exact: calls at 0, 2.5, 5, ... 497.5 ms.
  EXPECT_EQ(callee.issued, 200u);
  EXPECT_EQ(result.completed, 200u);
  EXPECT_EQ(result.failed, 0u);
  EXPECT_EQ(result.latency.count(), 200u);
  // Spread over the half second, not sent in a burst: the last call leaves about 0.5 s after
  // the first, and each quarter of the window sees about a quarter of the calls.
  ASSERT_EQ(callee.issueTimes.size(), 200u);
  double span = seconds(callee.issueTimes.back() - callee.issueTimes.front());
  EXPECT_GE(span, 0.49);
  EXPECT_LT(span, 0.8);
  for (int quarter = 0; quarter < 4; ++quarter) {
    auto from = before + quarter * 125 * kj::MILLISECONDS;
    auto until = from + 125 * kj::MILLISECONDS;
    auto inQuarter = std::count_if(callee.issueTimes.begin(), callee.issueTimes.end(),
                                   [&](kj::TimePoint t) { return t >= from && t < until; });
    EXPECT_GE(inQuarter, 25) << "quarter " << quarter;
    EXPECT_LE(inQuarter, 75) << "quarter " << quarter;
  }
  EXPECT_GT(result.callsPerSecond, 400 * 0.6);
  EXPECT_LT(result.callsPerSecond, 400 * 1.1);
}

TEST(LoadGenerator, OpenLoopMeasuresFromTheScheduledStart) {
  auto io = kj::setupAsyncIo();
  auto& timer = io.provider->getTimer();
  FakeCallee callee(timer, 1 * kj::MILLISECONDS);
  LoadGenerator generator(timer);

  // The first call stalls the loop for 60 ms. The calls due meanwhile go out late, and their
  // latency must show it even though each takes 1 ms once sent (no coordinated omission).
  auto issue = [&]() -> kj::Promise<void> {
    if (callee.issued == 0) {
      auto& clock = kj::systemPreciseMonotonicClock();
      auto until = clock.now() + 60 * kj::MILLISECONDS;
      while (clock.now() < until) {
      }
    }
    return callee.call();
  };
  LoadResult result =
      generator.runOpenLoop({.rate = 200, .duration = 200 * kj::MILLISECONDS}, kj::mv(issue))
          .wait(io.waitScope);

  EXPECT_EQ(result.completed, 40u);
  EXPECT_EQ(result.failed, 0u);
  EXPECT_GE(result.latency.max(), 50'000'000u);
  // Most calls were on time: the stall does not spread over the whole run.
  EXPECT_LT(result.latency.percentile(50), 20'000'000u);
}

TEST(LoadGenerator, OpenLoopDropsCallsBeyondTheOutstandingCap) {
  auto io = kj::setupAsyncIo();
  auto& timer = io.provider->getTimer();
  // 1000 calls/s of 50 ms each would need about 50 outstanding; only 5 are allowed.
  FakeCallee callee(timer, 50 * kj::MILLISECONDS);
  LoadGenerator generator(timer);

  LoadResult result =
      generator
          .runOpenLoop({.rate = 1000, .duration = 200 * kj::MILLISECONDS, .maxOutstanding = 5},
                       callee.issueFunction())
          .wait(io.waitScope);

  EXPECT_EQ(callee.maxInFlight, 5u);
  EXPECT_EQ(result.completed, callee.issued);
  EXPECT_EQ(result.completed + result.failed, 200u);
  EXPECT_EQ(result.failed, result.dropped);
  // About five calls per 50 ms get through.
  EXPECT_GE(result.dropped, 150u);
  EXPECT_LE(result.completed, 50u);
  KJ_IF_MAYBE (error, result.firstError) {
    EXPECT_TRUE(error->startsWith("dropped")) << error->cStr();
  } else {
    ADD_FAILURE() << "no error kept";
  }
}

TEST(LoadGenerator, OpenLoopCountsFailuresAndSkipsWarmUp) {
  auto io = kj::setupAsyncIo();
  auto& timer = io.provider->getTimer();
  LoadGenerator generator(timer);

  uint64_t issued = 0;
  auto issue = [&]() -> kj::Promise<void> {
    if (issued++ % 2 == 0) {
      return KJ_EXCEPTION(OVERLOADED, "try later");
    }
    return kj::READY_NOW;
  };
  // 100 calls/s: 10 in the warm-up, 20 measured, half of each failing.
  LoadResult result =
      generator
          .runOpenLoop(
              {.rate = 100, .duration = 200 * kj::MILLISECONDS, .warmUp = 100 * kj::MILLISECONDS},
              kj::mv(issue))
          .wait(io.waitScope);

  EXPECT_EQ(issued, 30u);
  EXPECT_EQ(result.completed, 10u);
  EXPECT_EQ(result.failed, 10u);
  EXPECT_EQ(result.dropped, 0u);
  KJ_IF_MAYBE (error, result.firstError) {
    EXPECT_STREQ(error->cStr(), "try later");
  } else {
    ADD_FAILURE() << "no error kept";
  }
}

}  // namespace
}  // namespace payhost::bench
