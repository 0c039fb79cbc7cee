// renderHostMetrics: the database pools' figures, labelled by pool.
#include "host/metrics/host-metrics.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>

namespace payhost::host {
namespace {

// The value of the sample line `name{labels}` in `text`, or -1 when there is none.
double sampleValue(const std::string& text, const std::string& series) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

TEST(HostMetrics, ExportsEachDatabasePoolLabelledByName) {
  Registry registry;
  HostShared shared;
  HostMetricsInput input{registry, shared, nullptr, {}, 0, 1, false};
  SqlPool::Stats store{2, 1, 3, 5, 1, 4, 1500 * kj::MICROSECONDS, 3, 6, 2};
  SqlPool::Stats ledger{1, 0, 0, 7, 0, 0, 0 * kj::MICROSECONDS, 4, 0, 0};
  input.databases.add(HostMetricsInput::Database{"store", store});
  input.databases.add(HostMetricsInput::Database{"ledger", ledger});
  auto rendered = renderHostMetrics(input);
  std::string text(rendered.cStr());
  EXPECT_NE(text.find("# TYPE payhost_db_connections gauge"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE payhost_db_transactions_total counter"), std::string::npos);
  EXPECT_EQ(sampleValue(text, "payhost_db_connections{pool=\"store\"}"), 2);
  EXPECT_EQ(sampleValue(text, "payhost_db_in_use{pool=\"store\"}"), 1);
  EXPECT_EQ(sampleValue(text, "payhost_db_waiting{pool=\"store\"}"), 3);
  EXPECT_EQ(sampleValue(text, "payhost_db_transactions_total{pool=\"store\"}"), 5);
  EXPECT_EQ(sampleValue(text, "payhost_db_timeouts_total{pool=\"store\"}"), 1);
  EXPECT_EQ(sampleValue(text, "payhost_db_discarded_total{pool=\"store\"}"), 4);
  EXPECT_DOUBLE_EQ(sampleValue(text, "payhost_db_wait_seconds_total{pool=\"store\"}"), 0.0015);
  EXPECT_EQ(sampleValue(text, "payhost_db_transactions_total{pool=\"ledger\"}"), 7);
  EXPECT_EQ(sampleValue(text, "payhost_db_size{pool=\"store\"}"), 3);
  EXPECT_EQ(sampleValue(text, "payhost_db_size{pool=\"ledger\"}"), 4);
  EXPECT_EQ(sampleValue(text, "payhost_db_scaling_total{pool=\"store\",decision=\"grow\"}"), 6);
  EXPECT_EQ(sampleValue(text, "payhost_db_scaling_total{pool=\"store\",decision=\"shrink\"}"), 2);
}

TEST(HostMetrics, NoDatabasePoolsNoDatabaseSamples) {
  Registry registry;
  HostShared shared;
  HostMetricsInput input{registry, shared, nullptr, {}, 0, 1, false};
  std::string text(renderHostMetrics(input).cStr());
  EXPECT_EQ(text.find("payhost_db_connections{"), std::string::npos);
  EXPECT_EQ(sampleValue(text, "payhost_shards"), 1);
}

}  // namespace
}  // namespace payhost::host
