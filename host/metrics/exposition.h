// The Prometheus text exposition format (version 0.0.4): metric families with their HELP and
// TYPE lines, then their samples, each family's samples together whatever order they were added
// in. Label values and HELP text are escaped as the format requires.
//
// Not thread-safe: one scrape builds one Exposition and throws it away.

#pragma once

#include <kj/string.h>
#include <kj/vector.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <string>

namespace payhost::host {

struct MetricLabel {
  kj::StringPtr name;
  kj::StringPtr value;
};

// `\` -> `\\`, `"` -> `\"`, newline -> `\n`: a label value.
kj::String escapeLabelValue(kj::StringPtr value);
// `\` -> `\\`, newline -> `\n`: HELP text.
kj::String escapeHelp(kj::StringPtr text);
// A sample value: integers as integers, non-finite values as +Inf, -Inf, NaN.
kj::String formatMetricValue(double value);

class Exposition {
public:
  enum class Type { COUNTER, GAUGE, HISTOGRAM };

  Exposition() = default;
  KJ_DISALLOW_COPY(Exposition);

  // Declares the family `name` (once; later calls are ignored). Samples must name a declared
  // family: `name`, or for a histogram `name_bucket`, `name_sum`, `name_count`.
  void family(kj::StringPtr name, Type type, kj::StringPtr help);

  void sample(kj::StringPtr family, kj::StringPtr name, std::initializer_list<MetricLabel> labels,
              double value);
  // A sample of a counter or gauge named like its family.
  void sample(kj::StringPtr name, std::initializer_list<MetricLabel> labels, double value) {
    sample(name, name, labels, value);
  }

  // One histogram: `bounds` upper bounds (ascending) with non-cumulative `counts` for each and
  // one more count for +Inf; writes the cumulative buckets, `_sum` and `_count`.
  void histogram(kj::StringPtr name, std::initializer_list<MetricLabel> labels,
                 kj::ArrayPtr<const double> bounds, kj::ArrayPtr<const uint64_t> counts,
                 double sum);

  // The whole text, families in the order they were declared.
  kj::String finish();

private:
  struct Family {
    kj::String header;
    kj::Vector<kj::String> lines;
  };
  void add(kj::StringPtr family, kj::StringPtr name, kj::ArrayPtr<const MetricLabel> labels,
           kj::StringPtr extraName, kj::StringPtr extraValue, kj::StringPtr value);
  kj::Vector<Family> families;
  std::map<std::string, size_t> index;
};

}  // namespace payhost::host
