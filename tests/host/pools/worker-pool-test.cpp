// WorkerPool: offload, quotas (limit, reservation, wait, OVERLOADED) and scaling, on real threads
// with a real KJ event loop. Blocking work waits on a gate the test opens, never on sleeps.
#include "host/pools/worker-pool.h"

#include "host/config/daemon-config.h"
#include "host/log/logger.h"

#include <kj/async-io.h>
#include <kj/mutex.h>

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>

namespace payhost::host {
namespace {

// The exception `func` throws (a test failure if none), for checking its type and message.
template <typename Func>
kj::Exception thrownBy(Func&& func) {
  KJ_IF_MAYBE (exception, kj::runCatchingExceptions(kj::fwd<Func>(func))) {
    return kj::mv(*exception);
  }
  ADD_FAILURE() << "no exception was thrown";
  return KJ_EXCEPTION(FAILED, "(none thrown)");
}

#define EXPECT_THROW_CONTAINING(text, code)                                              \
  do {                                                                                   \
    auto thrown = thrownBy([&]() { code; });                                             \
    EXPECT_NE(std::string(thrown.getDescription().cStr()).find(text), std::string::npos) \
        << thrown.getDescription().cStr();                                               \
  } while (false)

// Work blocks on the gate until the test opens it.
class Gate {
public:
  void wait() const {
    gate.when([](const bool& open) { return open; }, [](const bool&) {});
  }
  void open() { *gate.lockExclusive() = true; }

private:
  kj::MutexGuarded<bool> gate{false};
};

class WorkerPoolTest : public testing::Test {
protected:
  ~WorkerPoolTest() noexcept override {}

  kj::AsyncIoContext io = kj::setupAsyncIo();
  LogSink log{LogLevel::ERROR, LogFormat::LOGFMT};

  WorkerPool::Options options(uint32_t min, uint32_t max, kj::Duration wait) {
    WorkerPool::Options result;
    result.minThreads = min;
    result.maxThreads = max;
    result.leaseWait = wait;
    result.scaleInterval = 50 * kj::MILLISECONDS;
    return result;
  }

  // Runs the loop until `done` or 5 s pass.
  void waitFor(kj::Function<bool()> done) {
    auto deadline = io.provider->getTimer().now() + 5 * kj::SECONDS;
    while (!done() && io.provider->getTimer().now() < deadline) {
      io.provider->getTimer().afterDelay(1 * kj::MILLISECONDS).wait(io.waitScope);
    }
    ASSERT_TRUE(done());
  }
};

TEST_F(WorkerPoolTest, RunsWorkOffTheLoopThreadAndResolvesOnIt) {
  WorkerPool pool(options(1, 2, 100 * kj::MILLISECONDS), log);
  auto loopThread = std::this_thread::get_id();
  std::thread::id workThread;
  pool.run("p", io.provider->getTimer(), [&]() { workThread = std::this_thread::get_id(); })
      .wait(io.waitScope);
  EXPECT_NE(workThread, loopThread);
  EXPECT_EQ(pool.stats().completed, 1u);
  EXPECT_EQ(pool.leasesHeld("p"), 0u);
}

TEST_F(WorkerPoolTest, WorkThatThrowsRejectsOnlyItsPromise) {
  WorkerPool pool(options(1, 2, 100 * kj::MILLISECONDS), log);
  auto failing = pool.run("p", io.provider->getTimer(),
                          []() { KJ_FAIL_REQUIRE("offloaded work failed on purpose"); });
  EXPECT_THROW_CONTAINING("offloaded work failed on purpose", failing.wait(io.waitScope));
  bool ran = false;
  pool.run("p", io.provider->getTimer(), [&]() { ran = true; }).wait(io.waitScope);
  EXPECT_TRUE(ran);
  EXPECT_EQ(pool.leasesHeld("p"), 0u);
}

TEST_F(WorkerPoolTest, LimitMakesTheNextCallWaitThenFailOverloadedNamingPluginAndPool) {
  WorkerPool pool(options(2, 4, 80 * kj::MILLISECONDS), log);
  pool.setQuota("greedy", 0, 2);
  Gate gate;
  auto first = pool.run("greedy", io.provider->getTimer(), [&]() { gate.wait(); });
  auto second = pool.run("greedy", io.provider->getTimer(), [&]() { gate.wait(); });
  waitFor([&]() { return pool.leasesHeld("greedy") == 2; });
  auto started = io.provider->getTimer().now();
  auto third = pool.run("greedy", io.provider->getTimer(), []() {});
  try {
    third.wait(io.waitScope);
    ADD_FAILURE() << "a call beyond the limit succeeded";
  } catch (const kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::OVERLOADED);
    EXPECT_NE(e.getDescription().findFirst('g'), nullptr);
    EXPECT_TRUE(e.getDescription().startsWith("plugin greedy: worker pool quota exhausted"))
        << e.getDescription().cStr();
  }
  auto waited = io.provider->getTimer().now() - started;
  EXPECT_GE(waited, 80 * kj::MILLISECONDS);
  EXPECT_LT(waited, 2 * kj::SECONDS);
  EXPECT_EQ(pool.stats().timeouts, 1u);
  gate.open();
  first.wait(io.waitScope);
  second.wait(io.waitScope);
  EXPECT_EQ(pool.leasesHeld("greedy"), 0u);
}

TEST_F(WorkerPoolTest, WaitingCallGetsTheLeaseWhenOneIsReleased) {
  WorkerPool pool(options(1, 2, 5 * kj::SECONDS), log);
  pool.setQuota("p", 0, 1);
  Gate gate;
  auto first = pool.run("p", io.provider->getTimer(), [&]() { gate.wait(); });
  waitFor([&]() { return pool.leasesHeld("p") == 1; });
  bool secondRan = false;
  auto second = pool.run("p", io.provider->getTimer(), [&]() { secondRan = true; });
  EXPECT_FALSE(second.poll(io.waitScope));
  EXPECT_EQ(pool.stats().waiting, 1u);
  gate.open();
  first.wait(io.waitScope);
  second.wait(io.waitScope);
  EXPECT_TRUE(secondRan);
}

TEST_F(WorkerPoolTest, GreedyPluginCannotTakeAnotherPluginsReservation) {
  // Capacity 4: "fair" reserves 1, so "greedy" (no limit) may hold at most 3.
  WorkerPool pool(options(1, 4, 50 * kj::MILLISECONDS), log);
  pool.setQuota("fair", 1, 2);
  Gate gate;
  kj::Vector<kj::Promise<void>> greedy;
  for (int i = 0; i < 3; ++i) {
    greedy.add(pool.run("greedy", io.provider->getTimer(), [&]() { gate.wait(); }));
  }
  waitFor([&]() { return pool.leasesHeld("greedy") == 3; });
  EXPECT_EQ(thrownBy([&]() {
              pool.run("greedy", io.provider->getTimer(), []() {}).wait(io.waitScope);
            }).getType(),
            kj::Exception::Type::OVERLOADED);
  // The reservation is there at once, while greedy saturates everything else.
  bool fairRan = false;
  pool.run("fair", io.provider->getTimer(), [&]() { fairRan = true; }).wait(io.waitScope);
  EXPECT_TRUE(fairRan);
  gate.open();
  for (auto& promise : greedy)
    promise.wait(io.waitScope);
}

TEST_F(WorkerPoolTest, RefusesReservationsBeyondCapacity) {
  WorkerPool pool(options(1, 4, 50 * kj::MILLISECONDS), log);
  pool.setQuota("a", 3, 4);
  EXPECT_THROW_CONTAINING("reservations (5) exceed its capacity (4 threads)",
                          pool.setQuota("b", 2, 2));
  WorkerPool other(options(1, 4, 50 * kj::MILLISECONDS), log);
  EXPECT_THROW_CONTAINING("limit (1) is below its reservation (2)", other.setQuota("c", 2, 1));
}

TEST_F(WorkerPoolTest, CancellingAWaitingCallGivesUpItsPlace) {
  WorkerPool pool(options(1, 1, 5 * kj::SECONDS), log);
  Gate gate;
  auto first = pool.run("p", io.provider->getTimer(), [&]() { gate.wait(); });
  waitFor([&]() { return pool.leasesHeld("p") == 1; });
  {
    auto cancelled = pool.run("p", io.provider->getTimer(), []() {});
    EXPECT_FALSE(cancelled.poll(io.waitScope));
    EXPECT_EQ(pool.stats().waiting, 1u);
  }
  EXPECT_EQ(pool.stats().waiting, 0u);
  gate.open();
  first.wait(io.waitScope);
  // The lease went back: the next call runs.
  pool.run("p", io.provider->getTimer(), []() {}).wait(io.waitScope);
  EXPECT_EQ(pool.leasesHeld("p"), 0u);
}

TEST_F(WorkerPoolTest, GrowsUnderLoadAndShrinksBackWhenIdle) {
  WorkerPool pool(options(1, 4, 5 * kj::SECONDS), log);
  EXPECT_EQ(pool.stats().threads, 1u);
  Gate gate;
  kj::Vector<kj::Promise<void>> running;
  for (int i = 0; i < 4; ++i) {
    running.add(pool.run("p", io.provider->getTimer(), [&]() { gate.wait(); }));
  }
  waitFor([&]() { return pool.stats().busy == 4; });
  EXPECT_EQ(pool.stats().threads, 4u);
  EXPECT_GE(pool.stats().grown, 3u);
  gate.open();
  for (auto& promise : running)
    promise.wait(io.waitScope);
  // Idle: one thread goes per scale interval (50 ms) down to the minimum.
  waitFor([&]() { return pool.stats().threads == 1; });
  EXPECT_GE(pool.stats().shrunk, 3u);
  pool.run("p", io.provider->getTimer(), []() {}).wait(io.waitScope);
}

}  // namespace
}  // namespace payhost::host
