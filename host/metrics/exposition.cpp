#include "host/metrics/exposition.h"

#include <kj/debug.h>

#include <cmath>

namespace payhost::host {

namespace {

kj::String escape(kj::StringPtr text, bool quotes) {
  kj::Vector<char> out(text.size() + 8);
  for (char c : text) {
    if (c == '\\') {
      out.addAll(kj::StringPtr("\\\\"));
    } else if (c == '\n') {
      out.addAll(kj::StringPtr("\\n"));
    } else if (c == '"' && quotes) {
      out.addAll(kj::StringPtr("\\\""));
    } else {
      out.add(c);
    }
  }
  out.add('\0');
  return kj::String(out.releaseAsArray());
}

kj::StringPtr typeName(Exposition::Type type) {
  switch (type) {
    case Exposition::Type::COUNTER:
      return "counter";
    case Exposition::Type::GAUGE:
      return "gauge";
    case Exposition::Type::HISTOGRAM:
      return "histogram";
  }
  KJ_UNREACHABLE;
}

}  // namespace

kj::String escapeLabelValue(kj::StringPtr value) {
  return escape(value, true);
}

kj::String escapeHelp(kj::StringPtr text) {
  return escape(text, false);
}

kj::String formatMetricValue(double value) {
  if (std::isnan(value)) return kj::str("NaN");
  if (std::isinf(value)) return kj::str(value > 0 ? "+Inf" : "-Inf");
  if (value == std::floor(value) && std::fabs(value) < 9.007199254740992e15) {
    return kj::str(static_cast<int64_t>(value));
  }
  return kj::str(value);
}

void Exposition::family(kj::StringPtr name, Type type, kj::StringPtr help) {
  auto [it, inserted] = index.emplace(std::string(name.cStr()), families.size());
  if (!inserted) return;
  families.add(Family{
      kj::str("# HELP ", name, " ", escapeHelp(help), "\n# TYPE ", name, " ", typeName(type), "\n"),
      {}});
}

void Exposition::add(kj::StringPtr family, kj::StringPtr name,
                     kj::ArrayPtr<const MetricLabel> labels, kj::StringPtr extraName,
                     kj::StringPtr extraValue, kj::StringPtr value) {
  auto it = index.find(std::string(family.cStr()));
  KJ_REQUIRE(it != index.end(), "metric family not declared", family);
  kj::Vector<kj::String> pairs;
  for (auto& label : labels) {
    pairs.add(kj::str(label.name, "=\"", escapeLabelValue(label.value), "\""));
  }
  if (extraName.size() > 0) pairs.add(kj::str(extraName, "=\"", extraValue, "\""));
  auto labelText = pairs.empty() ? kj::String() : kj::str("{", kj::strArray(pairs, ","), "}");
  families[it->second].lines.add(kj::str(name, labelText, " ", value, "\n"));
}

void Exposition::sample(kj::StringPtr family, kj::StringPtr name,
                        std::initializer_list<MetricLabel> labels, double value) {
  add(family, name, kj::arrayPtr(labels.begin(), labels.size()), nullptr, nullptr,
      formatMetricValue(value));
}

void Exposition::histogram(kj::StringPtr name, std::initializer_list<MetricLabel> labels,
                           kj::ArrayPtr<const double> bounds, kj::ArrayPtr<const uint64_t> counts,
                           double sum) {
  KJ_REQUIRE(counts.size() == bounds.size() + 1, "a histogram needs one count per bucket and +Inf");
  auto labelArray = kj::arrayPtr(labels.begin(), labels.size());
  auto bucket = kj::str(name, "_bucket");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    auto bound = i < bounds.size() ? formatMetricValue(bounds[i]) : kj::str("+Inf");
    add(name, bucket, labelArray, "le", bound, kj::str(cumulative));
  }
  add(name, kj::str(name, "_sum"), labelArray, nullptr, nullptr, formatMetricValue(sum));
  add(name, kj::str(name, "_count"), labelArray, nullptr, nullptr, kj::str(cumulative));
}

kj::String Exposition::finish() {
  kj::Vector<kj::StringPtr> parts;
  for (auto& family : families) {
    parts.add(family.header);
    for (auto& line : family.lines)
      parts.add(line);
  }
  return kj::strArray(parts, "");
}

}  // namespace payhost::host
