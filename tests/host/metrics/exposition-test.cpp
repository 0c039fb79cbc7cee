#include "host/metrics/exposition.h"

#include "host/metrics/host-metrics.h"

#include <payhost/payments.capnp.h>

#include <gtest/gtest.h>

#include <limits>
#include <string>

namespace payhost::host {
namespace {

std::string s(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

TEST(Exposition, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(s(escapeLabelValue("plain")), "plain");
  EXPECT_EQ(s(escapeLabelValue("a\"b\\c\nd")), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(s(escapeHelp("say \"hi\"\\\n")), "say \"hi\"\\\\\\n");
}

TEST(Exposition, FormatsValues) {
  EXPECT_EQ(s(formatMetricValue(0)), "0");
  EXPECT_EQ(s(formatMetricValue(42)), "42");
  EXPECT_EQ(s(formatMetricValue(1e15)), "1000000000000000");
  EXPECT_EQ(s(formatMetricValue(0.25)), "0.25");
  EXPECT_EQ(s(formatMetricValue(std::numeric_limits<double>::infinity())), "+Inf");
  EXPECT_EQ(s(formatMetricValue(-std::numeric_limits<double>::infinity())), "-Inf");
  EXPECT_EQ(s(formatMetricValue(std::numeric_limits<double>::quiet_NaN())), "NaN");
}

TEST(Exposition, GroupsSamplesUnderTheirFamilyWithHelpAndType) {
  Exposition out;
  out.family("a_total", Exposition::Type::COUNTER, "As.\nSecond line");
  out.family("b", Exposition::Type::GAUGE, "Bs.");
  out.family("a_total", Exposition::Type::GAUGE, "Ignored: declared already.");
  out.sample("a_total", {{"plugin", "x"}}, 1);
  out.sample("b", {}, 2);
  out.sample("a_total", {{"plugin", "y\"z"}, {"method", "0"}}, 3);
  EXPECT_EQ(s(out.finish()),
            "# HELP a_total As.\\nSecond line\n"
            "# TYPE a_total counter\n"
            "a_total{plugin=\"x\"} 1\n"
            "a_total{plugin=\"y\\\"z\",method=\"0\"} 3\n"
            "# HELP b Bs.\n"
            "# TYPE b gauge\n"
            "b 2\n");
}

TEST(Exposition, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  Exposition out;
  out.family("d_seconds", Exposition::Type::HISTOGRAM, "Durations.");
  double bounds[] = {0.001, 0.5};
  uint64_t counts[] = {2, 0, 3};
  out.histogram("d_seconds", {{"m", "x"}}, bounds, counts, 7.5);
  EXPECT_EQ(s(out.finish()),
            "# HELP d_seconds Durations.\n"
            "# TYPE d_seconds histogram\n"
            "d_seconds_bucket{m=\"x\",le=\"0.001\"} 2\n"
            "d_seconds_bucket{m=\"x\",le=\"0.5\"} 2\n"
            "d_seconds_bucket{m=\"x\",le=\"+Inf\"} 5\n"
            "d_seconds_sum{m=\"x\"} 7.5\n"
            "d_seconds_count{m=\"x\"} 5\n");
}

TEST(Exposition, SampleOfAnUndeclaredFamilyIsABug) {
  Exposition out;
  EXPECT_ANY_THROW(out.sample("nope", {}, 1));
}

TEST(HostMetrics, MethodLabelsAreNamesForKnownInterfacesElseOrdinals) {
  auto fraud = capnp::typeId<schema::FraudScreen>();
  EXPECT_EQ(s(methodLabel(fraud, 0)), "screen");
  EXPECT_EQ(s(methodLabel(fraud, 9)), "9");
  EXPECT_EQ(s(methodLabel(0x1234, 2)), "2");
}

}  // namespace
}  // namespace payhost::host
