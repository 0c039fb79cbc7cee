#include "host/loader/generation.h"

#include <kj/time.h>

namespace payhost::host {

Generation::Generation(uint64_t id, kj::Own<PluginLibrary> library, Config config)
    : library_(kj::mv(library)), id_(id), config_(kj::mv(config)) {
  auto& descriptor = library_->descriptor();
  name_ = kj::heapString(descriptor.name);
  version_ = kj::heapString(descriptor.version);
  auto builder = kj::heapArrayBuilder<ServiceDeclaration>(descriptor.service_count);
  for (size_t i = 0; i < descriptor.service_count; ++i) {
    auto& service = descriptor.services[i];
    builder.add(ServiceDeclaration{kj::heapString(service.name),
                                   kj::heapString(service.interface_name), service.interface_id});
  }
  services_ = builder.finish();
  methodCounters_ = kj::heapArray<MethodCounters>(services_.size() * MAX_METHODS);
  loadedAtUnixMs_ = (kj::systemPreciseCalendarClock().now() - kj::UNIX_EPOCH) / kj::MILLISECONDS;
}

Generation::~Generation() noexcept = default;

namespace {

size_t latencyBucket(uint64_t micros) {
  if (micros < 1) return 0;
  // 4 * log2(micros), from the position of the top bit and the next two bits.
  int top = 63 - __builtin_clzll(micros);
  uint64_t next = top >= 2 ? (micros >> (top - 2)) & 3 : (micros << (2 - top)) & 3;
  size_t bucket = 1 + static_cast<size_t>(top) * 4 + next;
  return bucket < Generation::LATENCY_BUCKETS ? bucket : Generation::LATENCY_BUCKETS - 1;
}

// The smallest value (in microseconds) of the bucket after `bucket`: the bucket's upper bound.
double bucketUpperMicros(size_t bucket) {
  if (bucket == 0) return 1;
  size_t top = (bucket - 1) / 4;
  size_t next = (bucket - 1) % 4;
  return static_cast<double>(uint64_t{1} << top) * (1.0 + (next + 1) / 4.0);
}

}  // namespace

void Generation::recordLatency(kj::Duration elapsed) {
  uint64_t micros = elapsed / kj::MICROSECONDS;
  latency[latencyBucket(micros)].fetch_add(1, std::memory_order_relaxed);
}

kj::Duration Generation::latencyPercentile(double percent) const {
  uint64_t counts[LATENCY_BUCKETS];
  uint64_t total = 0;
  for (size_t i = 0; i < LATENCY_BUCKETS; ++i) {
    counts[i] = latency[i].load(std::memory_order_relaxed);
    total += counts[i];
  }
  if (total == 0) return 0 * kj::MICROSECONDS;
  auto rank = static_cast<uint64_t>(percent / 100.0 * static_cast<double>(total) + 0.999999);
  uint64_t seen = 0;
  for (size_t i = 0; i < LATENCY_BUCKETS; ++i) {
    seen += counts[i];
    if (seen >= rank) return static_cast<int64_t>(bucketUpperMicros(i)) * kj::MICROSECONDS;
  }
  return static_cast<int64_t>(bucketUpperMicros(LATENCY_BUCKETS - 1)) * kj::MICROSECONDS;
}

}  // namespace payhost::host
