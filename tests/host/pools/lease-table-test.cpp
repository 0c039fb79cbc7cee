// LeaseTable: reservations, limits, the wait and its OVERLOADED error, FIFO order, cancellation
// and per-owner accounting, on a real KJ event loop (and a real second thread for cross-thread
// grants).
#include "host/pools/lease-table.h"

#include <kj/async-io.h>
#include <kj/vector.h>

#include <gtest/gtest.h>

#include <string>
#include <thread>

namespace payhost::host {
namespace {

class LeaseTableTest : public testing::Test {
protected:
  ~LeaseTableTest() noexcept override {}

  kj::AsyncIoContext io = kj::setupAsyncIo();
  kj::Timer& timer() { return io.provider->getTimer(); }

  static LeaseTable::Options options(uint32_t capacity, kj::Duration wait) {
    LeaseTable::Options result;
    result.pool = kj::str("test pool");
    result.unit = kj::str("leases");
    result.capacityUnit = kj::str("slots");
    result.capacity = capacity;
    result.wait = wait;
    return result;
  }

  // Runs the loop until `done` or 5 s pass.
  void waitFor(kj::Function<bool()> done) {
    auto deadline = timer().now() + 5 * kj::SECONDS;
    while (!done() && timer().now() < deadline) {
      timer().afterDelay(1 * kj::MILLISECONDS).wait(io.waitScope);
    }
    ASSERT_TRUE(done());
  }
};

TEST_F(LeaseTableTest, LimitMakesTheNextRequestWaitThenFailOverloadedNamingPluginAndPool) {
  auto wait = 50 * kj::MILLISECONDS;
  LeaseTable table(options(4, wait));
  table.setQuota("greedy", 0, 2);
  auto a = KJ_ASSERT_NONNULL(table.tryAcquire("greedy"));
  auto b = table.acquire("greedy", timer()).wait(io.waitScope);
  EXPECT_EQ(table.heldBy("greedy"), 2u);
  EXPECT_EQ(table.tryAcquire("greedy"), nullptr);

  auto started = timer().now();
  auto third = table.acquire("greedy", timer());
  // Never hangs: the wait ends by itself, and only after the configured wait.
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { third.wait(io.waitScope); })) {
    auto elapsed = timer().now() - started;
    EXPECT_EQ(e->getType(), kj::Exception::Type::OVERLOADED);
    std::string text = e->getDescription().cStr();
    EXPECT_NE(text.find("plugin greedy"), std::string::npos) << text;
    EXPECT_NE(text.find("test pool"), std::string::npos) << text;
    EXPECT_NE(text.find("2 of 2 leases"), std::string::npos) << text;
    EXPECT_GE(elapsed, wait);
    EXPECT_LT(elapsed, 5 * kj::SECONDS);
  } else {
    ADD_FAILURE() << "a third lease beyond the limit was granted";
  }
  EXPECT_EQ(table.stats().timeouts, 1u);
  EXPECT_EQ(table.stats().waiting, 0u);
  EXPECT_EQ(table.heldBy("greedy"), 2u);
}

TEST_F(LeaseTableTest, AReservationHoldsAgainstAGreedyPlugin) {
  LeaseTable table(options(4, 20 * kj::MILLISECONDS));
  table.setQuota("careful", 1, 0);
  // No limit: the greedy plugin takes what it can, which is everything but the reservation.
  kj::Vector<LeaseTable::Lease> greedy;
  for (;;) {
    KJ_IF_MAYBE (lease, table.tryAcquire("greedy")) {
      greedy.add(kj::mv(*lease));
    } else {
      break;
    }
  }
  EXPECT_EQ(greedy.size(), 3u);
  EXPECT_THROW(table.acquire("greedy", timer()).wait(io.waitScope), kj::Exception);
  // The reservation is there for its owner at once.
  auto careful = table.acquire("careful", timer()).wait(io.waitScope);
  EXPECT_TRUE(careful.held());
  EXPECT_EQ(table.stats().inUse, 4u);
}

TEST_F(LeaseTableTest, WaitersAreServedFirstComeFirstServed) {
  LeaseTable table(options(1, 5 * kj::SECONDS));
  auto holder = KJ_ASSERT_NONNULL(table.tryAcquire("p"));
  kj::Vector<int> order;
  kj::Vector<kj::Promise<void>> waiting;
  for (int i = 0; i < 4; ++i) {
    // Eager: each continuation gives its lease back at once, so the next in line gets it.
    waiting.add(table.acquire("p", timer())
                    .then([&order, i](LeaseTable::Lease lease) { order.add(i); })
                    .eagerlyEvaluate(nullptr));
  }
  // Nobody overtakes the line, not even a request that finds a lease free by chance.
  EXPECT_EQ(table.tryAcquire("p"), nullptr);
  holder.release();
  kj::joinPromises(waiting.releaseAsArray()).wait(io.waitScope);
  ASSERT_EQ(order.size(), 4u);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(order[i], i);
}

TEST_F(LeaseTableTest, CancellingAWaitingRequestGivesItsPlaceBack) {
  LeaseTable table(options(1, 5 * kj::SECONDS));
  auto holder = KJ_ASSERT_NONNULL(table.tryAcquire("p"));
  bool secondGranted = false;
  auto first = table.acquire("p", timer());
  auto second = table.acquire("q", timer()).then([&](LeaseTable::Lease) { secondGranted = true; });
  EXPECT_EQ(table.stats().waiting, 2u);
  { auto dropped = kj::mv(first); }
  EXPECT_EQ(table.stats().waiting, 1u);
  holder.release();
  second.wait(io.waitScope);
  EXPECT_TRUE(secondGranted);
  EXPECT_EQ(table.stats().inUse, 0u);
  EXPECT_EQ(table.heldBy("p"), 0u);
}

TEST_F(LeaseTableTest, AGrantOnAnotherThreadReachesTheWaitingLoop) {
  LeaseTable table(options(1, 5 * kj::SECONDS));
  auto holder = KJ_ASSERT_NONNULL(table.tryAcquire("p"));
  auto caller = std::this_thread::get_id();
  std::thread::id grantedOn;
  auto waiting = table.acquireThen(
      "q", timer(), 7, [&](LeaseTable::Lease lease) { grantedOn = std::this_thread::get_id(); });
  std::thread releaser([&]() { holder.release(); });
  waiting.wait(io.waitScope);
  releaser.join();
  EXPECT_NE(grantedOn, caller);
  EXPECT_EQ(table.stats().inUse, 0u);
}

TEST_F(LeaseTableTest, CancelOwnerDropsItsWaitersAndReportsWhatItHolds) {
  LeaseTable table(options(2, 5 * kj::SECONDS));
  auto old1 = KJ_ASSERT_NONNULL(table.tryAcquire("p", 1));
  auto fresh = KJ_ASSERT_NONNULL(table.tryAcquire("p", 2));
  auto oldWaiting = table.acquire("p", timer(), 1);
  auto freshWaiting = table.acquire("p", timer(), 2);
  EXPECT_EQ(table.heldByOwner(1), 1u);
  auto report = table.cancelOwner(1);
  EXPECT_EQ(report.waitersCancelled, 1u);
  EXPECT_EQ(report.held, 1u);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { oldWaiting.wait(io.waitScope); })) {
    EXPECT_EQ(e->getType(), kj::Exception::Type::DISCONNECTED);
  } else {
    ADD_FAILURE() << "a cancelled owner's request was granted";
  }
  // The other version's request keeps its place and gets the lease the old one gives back.
  old1.release();
  auto lease = freshWaiting.wait(io.waitScope);
  EXPECT_EQ(table.heldByOwner(2), 2u);
  EXPECT_EQ(table.heldByOwner(1), 0u);
}

TEST_F(LeaseTableTest, SoftCapacityBoundsSharedLeasesButNotReservations) {
  LeaseTable table(options(4, 30 * kj::MILLISECONDS));
  table.setQuota("reserved", 2, 0);
  table.setSoftCapacity(1);
  // Two of four held back for "reserved": nothing left of a size of 1 for anyone else.
  EXPECT_EQ(table.tryAcquire("other"), nullptr);
  auto r1 = KJ_ASSERT_NONNULL(table.tryAcquire("reserved"));
  auto r2 = KJ_ASSERT_NONNULL(table.tryAcquire("reserved"));
  auto waiting = table.acquire("other", timer());
  EXPECT_EQ(table.waitingForCapacity(), 1u);
  table.setSoftCapacity(3);
  auto granted = waiting.wait(io.waitScope);
  EXPECT_TRUE(granted.held());
  EXPECT_EQ(table.softCapacity(), 3u);
  table.setSoftCapacity(99);
  EXPECT_EQ(table.softCapacity(), 4u);
}

TEST_F(LeaseTableTest, RefusesReservationsBeyondCapacityAndLimitsBelowReservations) {
  LeaseTable table(options(3, 10 * kj::MILLISECONDS));
  table.setQuota("a", 2, 0);
  EXPECT_THROW(table.setQuota("b", 2, 0), kj::Exception);
  table.setQuota("b", 1, 0);
  EXPECT_THROW(table.setQuota("a", 2, 1), kj::Exception);
}

}  // namespace
}  // namespace payhost::host
