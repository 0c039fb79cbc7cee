// <payhost/shared-state.h>: who joins which state, when it is made and dropped, its time, and
// joins, releases and operations from several threads at once (real threads).

#include <payhost/shared-state.h>

#include <kj/common.h>

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace payhost {
namespace {

struct Key {
  int id = 0;
  bool operator==(const Key& other) const = default;
};

// Neither copyable nor movable: made in place from what `make()` returns.
struct Counter {
  explicit Counter(std::atomic<int>& alive) : alive(alive) { alive.fetch_add(1); }
  ~Counter() { alive.fetch_sub(1); }
  KJ_DISALLOW_COPY(Counter);
  std::atomic<int>& alive;
  uint64_t count = 0;
};

using Shared = SharedState<Key, Counter>;

kj::Date at(int64_t seconds) {
  return kj::UNIX_EPOCH + seconds * kj::SECONDS;
}

TEST(SharedState, EqualKeysShareOneStateOthersGetTheirOwn) {
  std::atomic<int> alive{0};
  int made = 0;
  auto make = [&]() {
    ++made;
    return Counter(alive);
  };
  ASSERT_EQ(Shared::liveForTest(), 0u);
  auto first = Shared::join({1}, make);
  auto second = Shared::join({1}, make);
  auto other = Shared::join({2}, make);
  EXPECT_EQ(first.get(), second.get());
  EXPECT_NE(first.get(), other.get());
  EXPECT_EQ(made, 2);
  EXPECT_EQ(Shared::liveForTest(), 2u);
  EXPECT_EQ(other->key().id, 2);

  first->with([](Counter& counter) { counter.count += 5; });
  EXPECT_EQ(second->with([](Counter& counter) { return counter.count; }), 5u);
  EXPECT_EQ(other->with([](Counter& counter) { return counter.count; }), 0u);
}

TEST(SharedState, TheLastReleaseDropsItAndTheNextJoinStartsEmpty) {
  std::atomic<int> alive{0};
  auto make = [&]() { return Counter(alive); };
  {
    auto first = Shared::join({1}, make);
    {
      auto second = Shared::join({1}, make);
      second->with([](Counter& counter) { counter.count = 7; });
    }
    // One reference is left: still alive, still counted.
    EXPECT_EQ(alive.load(), 1);
    EXPECT_EQ(first->with([](Counter& counter) { return counter.count; }), 7u);
  }
  EXPECT_EQ(alive.load(), 0);
  EXPECT_EQ(Shared::liveForTest(), 0u);
  auto fresh = Shared::join({1}, make);
  EXPECT_EQ(fresh->with([](Counter& counter) { return counter.count; }), 0u);
}

TEST(SharedState, ItsTimeNeverRunsBackwards) {
  std::atomic<int> alive{0};
  auto shared = Shared::join({1}, [&]() { return Counter(alive); });
  auto seen = [&](kj::Date now) {
    return shared->run(now, [](Counter&, kj::Date t) { return t; });
  };
  EXPECT_EQ(seen(at(100)), at(100));
  // A caller whose clock reads earlier gets the latest time passed so far...
  EXPECT_EQ(seen(at(40)), at(100));
  // ...and a later reading moves it on.
  EXPECT_EQ(seen(at(130)), at(130));
}

// Threads joining, counting and releasing at once, so that a join regularly meets a state whose
// last reference another thread is dropping (kj::atomicAddRefWeak); under ASan a join that kept
// such a state would be a use after free. While one reference is held throughout, every
// increment lands in one state.
TEST(SharedState, JoinReleaseAndRunFromManyThreads) {
  constexpr int THREADS = 4;
  constexpr int ROUNDS = 2000;
  std::atomic<int> alive{0};
  auto make = [&]() { return Counter(alive); };
  auto run = [&]() {
    std::vector<std::thread> threads;
    threads.reserve(THREADS);
    for (int t = 0; t < THREADS; ++t) {
      threads.emplace_back([&]() {
        for (int i = 0; i < ROUNDS; ++i) {
          auto shared = Shared::join({1}, make);
          shared->run(at(i), [](Counter& counter, kj::Date) { ++counter.count; });
        }
      });
    }
    for (auto& thread : threads)
      thread.join();
  };
  run();
  EXPECT_EQ(alive.load(), 0);
  EXPECT_EQ(Shared::liveForTest(), 0u);

  auto anchor = Shared::join({1}, make);
  run();
  EXPECT_EQ(anchor->with([](Counter& counter) { return counter.count; }),
            uint64_t{THREADS} * ROUNDS);
  EXPECT_EQ(alive.load(), 1);
}

}  // namespace
}  // namespace payhost
