// The issuer all shards of the card-processor share: who joins which issuer, when it is dropped,
// and operations from several threads at once (real threads, no fake locks).

#include "shared-issuer.h"

#include <kj/debug.h>
#include <kj/vector.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "print.h"

namespace payhost::plugins::card {
namespace {

kj::Date start() {
  return kj::UNIX_EPOCH + int64_t{1767225600} * kj::SECONDS;
}

AuthorizeRequest auth(int64_t amount, kj::StringPtr key) {
  return AuthorizeRequest{.merchantId = "m_1",
                          .amount = amount,
                          .currency = "EUR",
                          .cardToken = "tok_visa_approve",
                          .idempotencyKey = key};
}

// The transaction id of an approval; fails the test on anything else.
kj::String approvedId(const Outcome& outcome) {
  KJ_IF_MAYBE (approval, outcome.result.tryGet<Approval>()) {
    return kj::heapString(approval->transactionId);
  }
  KJ_FAIL_ASSERT("expected an approval");
}

uint64_t epochOf(const SharedIssuer& shared) {
  return shared.with([](Issuer& issuer) { return issuer.idEpoch(); });
}

kj::String authorized(const SharedIssuer& shared, int64_t amount, kj::StringPtr key,
                      kj::Date now = start()) {
  return shared.run(now, [&](Issuer& issuer, kj::Date at) {
    return approvedId(issuer.authorize(auth(amount, key), at));
  });
}

TEST(SharedIssuer, InstancesWithTheSameOptionsJoinOneIssuer) {
  ASSERT_EQ(SharedIssuer::liveForTest(), 0u);
  auto first = joinIssuer({});
  auto second = joinIssuer({});
  EXPECT_EQ(first.get(), second.get());
  EXPECT_EQ(SharedIssuer::liveForTest(), 1u);

  auto id = authorized(*first, 1000, "a1");
  EXPECT_EQ(id, kj::str("txn_", kj::hex(epochOf(*first)), "_1"));
  auto captured = second->run(start(), [&](Issuer& issuer, kj::Date now) {
    return issuer.capture(
        {.transactionId = id, .amount = 400, .currency = "EUR", .idempotencyKey = "c1"}, now);
  });
  KJ_IF_MAYBE (approval, captured.result.tryGet<Approval>()) {
    EXPECT_EQ(approval->state, TransactionState::PARTIALLY_CAPTURED);
  } else {
    ADD_FAILURE() << "the second instance does not see the first one's authorization";
  }
  // Its idempotency records are shared too: the first instance's key replays.
  auto replay = second->run(start(), [&](Issuer& issuer, kj::Date now) {
    return issuer.authorize(auth(1000, "a1"), now);
  });
  EXPECT_TRUE(replay.replayed);
  EXPECT_EQ(approvedId(replay), id);
}

TEST(SharedIssuer, OtherOptionsGetAnotherIssuer) {
  Issuer::Options strict;
  strict.maxAmountMinor = 5000;
  auto usual = joinIssuer({});
  auto other = joinIssuer(strict);
  EXPECT_NE(usual.get(), other.get());
  EXPECT_EQ(SharedIssuer::liveForTest(), 2u);
  EXPECT_EQ(other->key().maxAmountMinor, 5000);
  EXPECT_NE(epochOf(*usual), epochOf(*other));

  auto id = authorized(*usual, 1000, "a1");
  auto elsewhere =
      other->run(start(), [&](Issuer& issuer, kj::Date now) { return issuer.sync(id, now); });
  ASSERT_TRUE(elsewhere.result.is<Rejection>());
  EXPECT_EQ(elsewhere.result.get<Rejection>().code, RejectCode::UNKNOWN_TRANSACTION);
  EXPECT_EQ(elsewhere.result.get<Rejection>().message, "no such transaction");
}

TEST(SharedIssuer, TheLastReleaseDropsItAndTheNextJoinStartsEmpty) {
  kj::String id;
  uint64_t epoch;
  {
    auto shared = joinIssuer({});
    epoch = epochOf(*shared);
    id = authorized(*shared, 1000, "a1");
    EXPECT_EQ(SharedIssuer::liveForTest(), 1u);
  }
  EXPECT_EQ(SharedIssuer::liveForTest(), 0u);
  auto fresh = joinIssuer({});
  EXPECT_NE(epochOf(*fresh), epoch);
  auto outcome = fresh->run(start(), [&](Issuer& issuer, kj::Date now) {
    EXPECT_EQ(issuer.transactionsHeldForTest(), 0u);
    return issuer.sync(id, now);
  });
  ASSERT_TRUE(outcome.result.is<Rejection>());
  // Not "forgotten": the new issuer never issued it, although its own first id ends in _1 too.
  EXPECT_EQ(outcome.result.get<Rejection>().message, "no such transaction");
  EXPECT_NE(authorized(*fresh, 1000, "a1"), id);
}

TEST(SharedIssuer, EpochsAreTwelveHexDigits) {
  std::set<uint64_t> epochs;
  for (int i = 0; i < 20; ++i) {
    auto shared = joinIssuer({});
    EXPECT_EQ(kj::str(kj::hex(epochOf(*shared))).size(), 12u);
    epochs.insert(epochOf(*shared));
  }
  // 47 random bits each: twenty draws that collide would mean the randomness is broken.
  EXPECT_EQ(epochs.size(), 20u);
}

TEST(SharedIssuer, ItsTimeNeverRunsBackwards) {
  Issuer::Options options;
  options.authWindow = 1 * kj::HOURS;
  auto shared = joinIssuer(options);
  auto id = authorized(*shared, 1000, "a1");
  // One shard's clock has passed the window...
  auto late = shared->run(start() + 2 * kj::HOURS, [&](Issuer& issuer, kj::Date now) {
    EXPECT_EQ(now, start() + 2 * kj::HOURS);
    return issuer.sync(id, now);
  });
  ASSERT_TRUE(late.result.is<Approval>());
  EXPECT_EQ(late.result.get<Approval>().state, TransactionState::EXPIRED);
  // ...so another whose clock reads earlier cannot capture it any more.
  auto behind = shared->run(start(), [&](Issuer& issuer, kj::Date now) {
    EXPECT_EQ(now, start() + 2 * kj::HOURS);
    return issuer.capture(
        {.transactionId = id, .amount = 100, .currency = "EUR", .idempotencyKey = "c1"}, now);
  });
  ASSERT_TRUE(behind.result.is<Rejection>());
  EXPECT_EQ(behind.result.get<Rejection>().code, RejectCode::INVALID_STATE);
}

// Several threads joining and releasing at once, so that a join regularly meets an issuer whose
// last reference another thread is dropping (kj::atomicAddRefWeak). Under ASan a join that kept
// such an issuer would be a use after free.
TEST(SharedIssuer, JoinAndReleaseFromManyThreads) {
  constexpr int THREADS = 4;
  constexpr int ROUNDS = 2000;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  threads.reserve(THREADS);
  for (int t = 0; t < THREADS; ++t) {
    threads.emplace_back([&failures, t]() {
      for (int i = 0; i < ROUNDS; ++i) {
        auto shared = joinIssuer({});
        auto key = kj::str("k-", t, "-", i);
        auto outcome = shared->run(start(), [&](Issuer& issuer, kj::Date now) {
          return issuer.authorize(auth(100, key), now);
        });
        if (!outcome.result.is<Approval>()) failures.fetch_add(1);
      }
    });
  }
  for (auto& thread : threads)
    thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(SharedIssuer::liveForTest(), 0u);
}

// Threads authorizing and capturing on one issuer at once: every id is unique, and every
// transaction's captures add up to no more than it authorized, with exactly the captures that
// fit approved.
TEST(SharedIssuer, ConcurrentOperationsKeepIdsUniqueAndTotalsConsistent) {
  constexpr int THREADS = 4;
  constexpr int PER_THREAD = 300;
  constexpr int64_t AMOUNT = 1000;
  constexpr int64_t CAPTURE = 300;  // Four of these exceed AMOUNT: exactly three fit.
  auto shared = joinIssuer({});

  std::vector<std::vector<std::string>> ids(THREADS);
  std::vector<std::thread> threads;
  threads.reserve(THREADS);
  for (int t = 0; t < THREADS; ++t) {
    threads.emplace_back([&, t]() {
      for (int i = 0; i < PER_THREAD; ++i) {
        ids[t].push_back(authorized(*shared, AMOUNT, kj::str("a-", t, "-", i)).cStr());
      }
    });
  }
  for (auto& thread : threads)
    thread.join();
  threads.clear();

  std::vector<std::string> all;
  for (auto& list : ids)
    all.insert(all.end(), list.begin(), list.end());
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), all.size());
  EXPECT_EQ(all.size(), size_t{THREADS} * PER_THREAD);

  // Every thread captures CAPTURE on every transaction, each with its own key, in its own order.
  std::vector<std::atomic<int>> approved(all.size());
  std::atomic<int> wrong{0};
  threads.reserve(THREADS);
  for (int t = 0; t < THREADS; ++t) {
    threads.emplace_back([&, t]() {
      for (size_t n = 0; n < all.size(); ++n) {
        size_t i = (n * 7 + static_cast<size_t>(t) * 131) % all.size();
        auto key = kj::str("c-", t, "-", i);
        auto outcome = shared->run(start(), [&](Issuer& issuer, kj::Date now) {
          return issuer.capture({.transactionId = all[i].c_str(),
                                 .amount = CAPTURE,
                                 .currency = "EUR",
                                 .idempotencyKey = key},
                                now);
        });
        KJ_IF_MAYBE (rejection, outcome.result.tryGet<Rejection>()) {
          if (rejection->code != RejectCode::AMOUNT_EXCEEDS_AVAILABLE) wrong.fetch_add(1);
        } else if (outcome.result.is<Approval>()) {
          approved[i].fetch_add(1);
        } else {
          wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& thread : threads)
    thread.join();

  EXPECT_EQ(wrong.load(), 0);
  for (size_t i = 0; i < all.size(); ++i) {
    ASSERT_EQ(approved[i].load(), 3) << all[i];
    auto synced = shared->run(start(), [&](Issuer& issuer, kj::Date now) {
      // 100 left: one more capture of 100 fits, then nothing.
      auto key = kj::str("rest-", i);
      auto rest = issuer.capture({.transactionId = all[i].c_str(),
                                  .amount = 100,
                                  .currency = "EUR",
                                  .idempotencyKey = key},
                                 now);
      KJ_ASSERT(rest.result.is<Approval>());
      return issuer.sync(all[i].c_str(), now);
    });
    ASSERT_TRUE(synced.result.is<Approval>());
    EXPECT_EQ(synced.result.get<Approval>().state, TransactionState::CAPTURED) << all[i];
  }
}

}  // namespace
}  // namespace payhost::plugins::card
