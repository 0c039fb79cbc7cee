// SecurityAudit: the throttle between client-driven security events and the audit log. Real
// audit log files; time is passed in (`recordAt`), so no test waits for a window to pass.

#include "host/admin/security-audit.h"

#include <kj/debug.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/test-artifacts.h"

namespace payhost::test {
namespace {

namespace fs = std::filesystem;
using host::AuditLog;
using host::SecurityAudit;
using testing::HasSubstr;
using Clock = SecurityAudit::Clock;

std::string toStd(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

class SecurityAuditTest : public testing::Test {
protected:
  SecurityAuditTest() {
    auto base = testsupport::testTempBase() / "security-audit-test-XXXXXX";
    std::string pattern = base.native();
    KJ_ASSERT(mkdtemp(pattern.data()) != nullptr, "mkdtemp failed", pattern.c_str());
    dir = fs::canonical(pattern);
    path = kj::str((dir / "audit.log").c_str());
  }
  ~SecurityAuditTest() override { testsupport::retireTestDir(dir); }

  fs::path dir;
  kj::String path;
  Clock::time_point t0 = Clock::now();
};

TEST_F(SecurityAuditTest, OneRecordPerKeyPerWindowThenTheCount) {
  AuditLog log(path);
  SecurityAudit::Options options;
  options.window = std::chrono::seconds(60);
  SecurityAudit audit(log, options);
  for (int i = 0; i < 100; ++i) {
    bool written = audit.recordAt(t0 + std::chrono::milliseconds(i), "auth-failed", "peer=10.0.0.1",
                                  "refused", "no-certificate", "handshake");
    EXPECT_EQ(written, i == 0) << i;
  }
  // Another key (another reason) is not throttled by the first.
  EXPECT_TRUE(audit.recordAt(t0, "auth-failed", "peer=10.0.0.1", "refused", "old-protocol", "x"));
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(audit.suppressedTotal(), 99u);
  // A window later the key records again, with what it suppressed.
  EXPECT_TRUE(audit.recordAt(t0 + std::chrono::seconds(61), "auth-failed", "peer=10.0.0.1",
                             "refused", "no-certificate", "handshake"));
  ASSERT_EQ(log.size(), 3u);
  EXPECT_THAT(toStd(log[2].getDetail()), HasSubstr("(99 more like it suppressed"));
  EXPECT_EQ(toStd(log[2].getActor()), "peer=10.0.0.1");
  EXPECT_EQ(toStd(log[2].getOutcome()), "refused");
  // Nothing left to summarise.
  EXPECT_EQ(audit.flush(), 0u);
  EXPECT_EQ(AuditLog::verify(path), nullptr);
}

TEST_F(SecurityAuditTest, GlobalCapBoundsRecordsWhateverTheActors) {
  AuditLog log(path);
  SecurityAudit::Options options;
  options.maxRecordsPerWindow = 5;
  SecurityAudit audit(log, options);
  size_t written = 0;
  for (int i = 0; i < 40; ++i) {
    auto actor = kj::str("peer=10.0.0.", i);
    written += audit.recordAt(t0, "auth-failed", actor, "refused", "no-certificate", "h") ? 1 : 0;
  }
  EXPECT_EQ(written, 5u);
  EXPECT_EQ(log.size(), 5u);
  EXPECT_EQ(audit.suppressedTotal(), 35u);
  // The summary at shutdown accounts for every suppressed event: one record per key up to the
  // cap, then one for the rest of the action.
  EXPECT_EQ(audit.flush(), 6u);
  ASSERT_EQ(log.size(), 11u);
  EXPECT_THAT(toStd(log[5].getDetail()), HasSubstr("1 more like it suppressed"));
  EXPECT_EQ(toStd(log[10].getActor()), "*");
  EXPECT_THAT(toStd(log[10].getDetail()),
              HasSubstr("30 more suppressed events from 30 other actors"));
  EXPECT_EQ(AuditLog::verify(path), nullptr);
}

TEST_F(SecurityAuditTest, KeysBeyondTheLimitShareOneActor) {
  AuditLog log(path);
  SecurityAudit::Options options;
  options.maxKeys = 3;
  options.maxRecordsPerWindow = 100;
  SecurityAudit audit(log, options);
  for (int i = 0; i < 10; ++i) {
    auto actor = kj::str("peer=10.0.0.", i);
    audit.recordAt(t0, "auth-failed", actor, "refused", "other", "h");
  }
  // Three own keys, then one shared key ("*") that records once and counts the other six.
  ASSERT_EQ(log.size(), 4u);
  EXPECT_EQ(toStd(log[3].getActor()), "*");
  EXPECT_EQ(audit.suppressedTotal(), 6u);
  EXPECT_EQ(audit.flush(), 1u);
  EXPECT_THAT(toStd(log[4].getDetail()), HasSubstr("6 more like it suppressed"));
}

TEST_F(SecurityAuditTest, ThreadsRecordConcurrentlyAndTheChainHolds) {
  AuditLog log(path);
  SecurityAudit audit(log);
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&audit, t]() {
      auto actor = kj::str("identity-", t);
      for (int i = 0; i < 50; ++i)
        audit.record("permission-denied", actor, "refused", "test.echo", "method 'screen'");
    });
  }
  for (auto& thread : threads)
    thread.join();
  EXPECT_EQ(log.size(), 4u);
  EXPECT_EQ(audit.suppressedTotal(), 196u);
  EXPECT_EQ(audit.flush(), 4u);
  EXPECT_EQ(AuditLog::verify(path), nullptr);
}

}  // namespace
}  // namespace payhost::test
