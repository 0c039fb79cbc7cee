#include "bench/histogram.h"

#include <kj/debug.h>

#include <algorithm>
#include <bit>
#include <cmath>

namespace payhost::bench {

namespace {

constexpr uint32_t SUB_BUCKETS = 1u << Histogram::SUB_BUCKET_BITS;

// A value whose highest set bit is `b` keeps its top SUB_BUCKET_BITS + 1 bits: `shift` = the bits
// dropped. Values below 2 * SUB_BUCKETS drop none and map to themselves; above, each power of two
// takes SUB_BUCKETS consecutive indices, so the index grows with the value.
uint32_t bucketIndex(uint64_t value) {
  uint32_t highBit = 63 - std::countl_zero(value | 1);
  uint32_t shift = highBit < Histogram::SUB_BUCKET_BITS ? 0 : highBit - Histogram::SUB_BUCKET_BITS;
  return (shift << Histogram::SUB_BUCKET_BITS) + static_cast<uint32_t>(value >> shift);
}

// The middle of bucket `index`: its lower bound plus half its width, rounded down.
uint64_t bucketMiddle(uint32_t index) {
  uint32_t shift = index < 2 * SUB_BUCKETS ? 0 : (index >> Histogram::SUB_BUCKET_BITS) - 1;
  uint64_t lower = static_cast<uint64_t>(index - (shift << Histogram::SUB_BUCKET_BITS)) << shift;
  uint64_t width = uint64_t(1) << shift;
  return lower + (width - 1) / 2;
}

}  // namespace

Histogram::Histogram() : counts(kj::heapArray<uint64_t>(BUCKET_COUNT)) {
  std::fill(counts.begin(), counts.end(), 0);
}

void Histogram::record(uint64_t ns) {
  ++counts[bucketIndex(ns)];
  ++total;
  minValue = std::min(minValue, ns);
  maxValue = std::max(maxValue, ns);
  sum += static_cast<double>(ns);
}

void Histogram::merge(const Histogram& other) {
  if (other.total == 0) return;
  for (uint32_t i = 0; i < BUCKET_COUNT; ++i) {
    counts[i] += other.counts[i];
  }
  total += other.total;
  minValue = std::min(minValue, other.minValue);
  maxValue = std::max(maxValue, other.maxValue);
  sum += other.sum;
}

void Histogram::reset() {
  std::fill(counts.begin(), counts.end(), 0);
  total = 0;
  minValue = UINT64_MAX;
  maxValue = 0;
  sum = 0;
}

uint64_t Histogram::percentile(double p) const {
  KJ_REQUIRE(p >= 0 && p <= 100, "percentile out of range", p);
  if (total == 0) return 0;

  // Same arithmetic as the nearest-rank definition callers compare against.
  uint64_t rank = static_cast<uint64_t>(std::ceil(p / 100 * static_cast<double>(total)));
  rank = std::clamp<uint64_t>(rank, 1, total);
  // The first and last order statistics are known exactly.
  if (rank == 1) return minValue;
  if (rank == total) return maxValue;

  uint64_t seen = 0;
  for (uint32_t i = 0; i < BUCKET_COUNT; ++i) {
    seen += counts[i];
    if (seen >= rank) {
      return std::clamp(bucketMiddle(i), minValue, maxValue);
    }
  }
  KJ_FAIL_ASSERT("bucket counts add up to less than count()", seen, total);
}

}  // namespace payhost::bench
