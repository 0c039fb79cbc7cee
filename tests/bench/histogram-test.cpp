#include "bench/histogram.h"

#include <kj/exception.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace payhost::bench {
namespace {

constexpr double PERCENTILES[] = {0, 0.1, 1, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100};

// The nearest-rank order statistic, from the sorted values themselves.
uint64_t exactPercentile(const std::vector<uint64_t>& sorted, double p) {
  auto rank = static_cast<uint64_t>(std::ceil(p / 100 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<uint64_t>(rank, 1, sorted.size()) - 1];
}

double relativeError(uint64_t got, uint64_t exact) {
  if (exact == 0) return got == 0 ? 0 : 1;
  return std::abs(static_cast<double>(got) - static_cast<double>(exact)) /
         static_cast<double>(exact);
}

// Records `values` and checks count, min, max, mean and every percentile against them.
void expectMatchesExact(std::vector<uint64_t> values) {
  Histogram histogram;
  double sum = 0;
  for (uint64_t value : values) {
    histogram.record(value);
    sum += static_cast<double>(value);
  }
  std::sort(values.begin(), values.end());

  EXPECT_EQ(histogram.count(), values.size());
  EXPECT_EQ(histogram.min(), values.front());
  EXPECT_EQ(histogram.max(), values.back());
  EXPECT_NEAR(histogram.mean(), sum / static_cast<double>(values.size()),
              1e-9 * sum / static_cast<double>(values.size()));
  for (double p : PERCENTILES) {
    uint64_t exact = exactPercentile(values, p);
    uint64_t got = histogram.percentile(p);
    EXPECT_LT(relativeError(got, exact), 0.01) << "p" << p << ": " << got << " vs " << exact;
    EXPECT_LE(relativeError(got, exact), Histogram::MAX_RELATIVE_ERROR)
        << "p" << p << ": " << got << " vs " << exact;
  }
}

TEST(Histogram, EmptyReportsZeroEverywhere) {
  Histogram histogram;
  EXPECT_EQ(histogram.count(), 0u);
  EXPECT_EQ(histogram.min(), 0u);
  EXPECT_EQ(histogram.max(), 0u);
  EXPECT_EQ(histogram.mean(), 0);
  for (double p : PERCENTILES) {
    EXPECT_EQ(histogram.percentile(p), 0u) << "p" << p;
  }
}

TEST(Histogram, PercentileOutsideZeroToHundredIsRefused) {
  Histogram histogram;
  histogram.record(1);
  EXPECT_THROW((void)histogram.percentile(-0.1), kj::Exception);
  EXPECT_THROW((void)histogram.percentile(100.1), kj::Exception);
  EXPECT_THROW((void)histogram.percentile(std::nan("")), kj::Exception);
}

TEST(Histogram, SmallValuesAreExact) {
  Histogram histogram;
  for (uint64_t value = 0; value < 256; ++value) {
    histogram.record(value);
  }
  for (uint64_t rank = 1; rank <= 256; ++rank) {
    // A p that lands exactly on `rank` under nearest-rank.
    double p = (static_cast<double>(rank) - 0.5) / 256 * 100;
    EXPECT_EQ(histogram.percentile(p), rank - 1);
  }
}

TEST(Histogram, PercentilesMatchSortedUniformData) {
  std::mt19937_64 random(20261127);
  std::uniform_int_distribution<uint64_t> distribution(1, 100'000'000);
  std::vector<uint64_t> values(100'000);
  for (auto& value : values)
    value = distribution(random);
  expectMatchesExact(kj::mv(values));
}

TEST(Histogram, PercentilesMatchSortedLogNormalData) {
  // Latency-like: median about 100 us, a long tail into tens of milliseconds.
  std::mt19937_64 random(7);
  std::lognormal_distribution<double> distribution(std::log(100'000.0), 1.5);
  std::vector<uint64_t> values(100'000);
  for (auto& value : values)
    value = static_cast<uint64_t>(distribution(random)) + 1;
  expectMatchesExact(kj::mv(values));
}

TEST(Histogram, PercentilesMatchSortedBimodalData) {
  // 98.5% fast calls near 60 us, 1.5% stalls near 40 ms: p99 sits in the second mode.
  std::mt19937_64 random(99);
  std::normal_distribution<double> fast(60'000, 5'000);
  std::normal_distribution<double> slow(40'000'000, 8'000'000);
  std::bernoulli_distribution stalled(0.015);
  std::vector<uint64_t> values(50'000);
  for (auto& value : values) {
    double sample = stalled(random) ? slow(random) : fast(random);
    value = static_cast<uint64_t>(std::max(sample, 1.0));
  }
  expectMatchesExact(kj::mv(values));
}

TEST(Histogram, PercentilesMatchSortedDataSpanningAllMagnitudes) {
  // Log-uniform from 1 ns to 100 s.
  std::mt19937_64 random(1);
  std::uniform_real_distribution<double> exponent(0, std::log2(100e9));
  std::vector<uint64_t> values(100'000);
  for (auto& value : values)
    value = static_cast<uint64_t>(std::exp2(exponent(random)));
  expectMatchesExact(kj::mv(values));
}

TEST(Histogram, EveryMagnitudeIsWithinOnePercent) {
  // One value between a tiny and a huge one, so percentile(50) is that value's bucket and not
  // clamped to min() or max().
  std::mt19937_64 random(3);
  for (uint32_t bit = 1; bit < 63; ++bit) {
    uint64_t low = uint64_t(1) << bit;
    std::uniform_int_distribution<uint64_t> inside(low, 2 * low - 1);
    for (uint64_t value : {low, 2 * low - 1, inside(random), inside(random)}) {
      Histogram histogram;
      histogram.record(0);
      histogram.record(value);
      histogram.record(UINT64_MAX);
      uint64_t got = histogram.percentile(50);
      // LE: above 2^53 the double arithmetic rounds the (strictly smaller) error up to the bound.
      EXPECT_LE(relativeError(got, value), Histogram::MAX_RELATIVE_ERROR)
          << value << " reported as " << got;
    }
  }
}

TEST(Histogram, ExtremesAreKeptExactly) {
  Histogram histogram;
  histogram.record(0);
  histogram.record(1);
  histogram.record(100'000'000'000);  // 100 s
  histogram.record(UINT64_MAX);
  EXPECT_EQ(histogram.count(), 4u);
  EXPECT_EQ(histogram.min(), 0u);
  EXPECT_EQ(histogram.max(), UINT64_MAX);
  EXPECT_EQ(histogram.percentile(0), 0u);
  EXPECT_EQ(histogram.percentile(25), 0u);
  EXPECT_EQ(histogram.percentile(50), 1u);
  EXPECT_LT(relativeError(histogram.percentile(75), 100'000'000'000), 0.01);
  EXPECT_EQ(histogram.percentile(100), UINT64_MAX);

  Histogram single;
  single.record(123'456'789);
  for (double p : PERCENTILES) {
    EXPECT_EQ(single.percentile(p), 123'456'789u) << "p" << p;
  }
  EXPECT_EQ(single.mean(), 123'456'789);
}

TEST(Histogram, MergeEqualsRecordingEverythingInOne) {
  std::mt19937_64 random(11);
  std::lognormal_distribution<double> distribution(std::log(1'000'000.0), 1.0);
  Histogram left;
  Histogram right;
  Histogram both;
  std::vector<uint64_t> values;
  for (int i = 0; i < 20'000; ++i) {
    auto value = static_cast<uint64_t>(distribution(random));
    // Uneven split, and the right side alone holds the largest values.
    (value > 5'000'000 || i % 3 == 0 ? right : left).record(value);
    both.record(value);
    values.push_back(value);
  }
  left.merge(right);
  std::sort(values.begin(), values.end());

  EXPECT_EQ(left.count(), both.count());
  EXPECT_EQ(left.min(), both.min());
  EXPECT_EQ(left.max(), both.max());
  EXPECT_NEAR(left.mean(), both.mean(), 1e-9 * both.mean());
  for (double p : PERCENTILES) {
    EXPECT_EQ(left.percentile(p), both.percentile(p)) << "p" << p;
    EXPECT_LT(relativeError(left.percentile(p), exactPercentile(values, p)), 0.01) << "p" << p;
  }
}

TEST(Histogram, MergeWithEmptyChangesNothingOrCopies) {
  Histogram empty;
  Histogram some;
  some.record(500);
  some.record(70'000);

  some.merge(empty);
  EXPECT_EQ(some.count(), 2u);
  EXPECT_EQ(some.min(), 500u);
  EXPECT_EQ(some.max(), 70'000u);

  empty.merge(some);
  EXPECT_EQ(empty.count(), 2u);
  EXPECT_EQ(empty.min(), 500u);
  EXPECT_EQ(empty.max(), 70'000u);
  EXPECT_EQ(empty.percentile(0), 500u);
  EXPECT_EQ(empty.percentile(100), 70'000u);
  EXPECT_EQ(empty.mean(), 35'250);
}

TEST(Histogram, ResetForgetsEverything) {
  Histogram histogram;
  histogram.record(10);
  histogram.record(1'000'000);
  histogram.reset();
  EXPECT_EQ(histogram.count(), 0u);
  EXPECT_EQ(histogram.min(), 0u);
  EXPECT_EQ(histogram.max(), 0u);
  EXPECT_EQ(histogram.mean(), 0);
  EXPECT_EQ(histogram.percentile(50), 0u);

  histogram.record(42);
  EXPECT_EQ(histogram.count(), 1u);
  EXPECT_EQ(histogram.min(), 42u);
  EXPECT_EQ(histogram.max(), 42u);
  EXPECT_EQ(histogram.percentile(100), 42u);
}

TEST(Histogram, MoveKeepsTheData) {
  Histogram histogram;
  histogram.record(77);
  Histogram moved = kj::mv(histogram);
  EXPECT_EQ(moved.count(), 1u);
  EXPECT_EQ(moved.percentile(50), 77u);
}

}  // namespace
}  // namespace payhost::bench
