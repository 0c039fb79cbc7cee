// A latency histogram for the benchmark tools: HDR-style log-linear buckets over the whole
// uint64_t range (nanoseconds, from 0 ns to about 584 years), so nothing is ever clamped.
//
// Values below 256 get a bucket each (exact). Above, every power of two is split into 128 equal
// buckets, so a bucket is at most 1/128 of its lower bound wide; a percentile is reported as the
// middle of its bucket, within MAX_RELATIVE_ERROR (1/256, about 0.4%) of the exact order statistic.
// Memory is fixed at construction (BUCKET_COUNT counters, about 58 KiB); `record()` is O(1),
// `merge()` and `percentile()` are O(BUCKET_COUNT).
//
// Not thread-safe: one thread records into a histogram; combine per-thread histograms with
// `merge()` once they are done. Movable, not copyable; a moved-from histogram may only be
// destroyed or assigned to.

#pragma once

#include <kj/array.h>
#include <kj/common.h>

#include <cstdint>

namespace payhost::bench {

class Histogram {
public:
  // Bits of each value kept below its highest set bit.
  static constexpr uint32_t SUB_BUCKET_BITS = 7;
  static constexpr uint32_t BUCKET_COUNT = (65 - SUB_BUCKET_BITS) << SUB_BUCKET_BITS;
  // Bound on |percentile(p) - exact| / exact, where exact is the order statistic it stands for.
  static constexpr double MAX_RELATIVE_ERROR = 1.0 / (2u << SUB_BUCKET_BITS);

  Histogram();
  Histogram(Histogram&&) = default;
  Histogram& operator=(Histogram&&) = default;
  KJ_DISALLOW_COPY(Histogram);

  void record(uint64_t ns);
  // Adds everything `other` recorded, as if each of its values had been recorded here.
  void merge(const Histogram& other);
  // Forgets every value; the memory is kept.
  void reset();

  uint64_t count() const { return total; }
  // Exact smallest and largest values recorded; 0 when empty.
  uint64_t min() const { return total == 0 ? 0 : minValue; }
  uint64_t max() const { return maxValue; }
  // Exact up to double rounding; 0 when empty.
  double mean() const { return total == 0 ? 0 : sum / static_cast<double>(total); }

  // The value at percentile `p` (0 to 100) by nearest rank: the ceil(p / 100 * count())-th
  // smallest value (the smallest for p = 0), within MAX_RELATIVE_ERROR and never outside
  // [min(), max()]; exact for the smallest and the largest. 0 when empty.
  uint64_t percentile(double p) const;

private:
  kj::Array<uint64_t> counts;
  uint64_t total = 0;
  uint64_t minValue = UINT64_MAX;
  uint64_t maxValue = 0;
  double sum = 0;
};

}  // namespace payhost::bench
