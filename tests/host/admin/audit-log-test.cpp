#include "host/admin/audit-log.h"

#include <kj/debug.h>
#include <kj/exception.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/test-artifacts.h"

namespace payhost::test {
namespace {

namespace fs = std::filesystem;
// The suite is named after the class under test, so the class goes by another name here.
using Log = host::AuditLog;
using testing::HasSubstr;

std::string toStd(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

// A fresh directory, removed with everything in it (or kept for the card-number scan).
class TempDir {
public:
  TempDir() {
    auto base = testsupport::testTempBase() / "audit-log-test-XXXXXX";
    std::string pattern = base.native();
    KJ_ASSERT(mkdtemp(pattern.data()) != nullptr, "mkdtemp failed", pattern.c_str());
    path = fs::canonical(pattern);
  }
  ~TempDir() { testsupport::retireTestDir(path); }
  KJ_DISALLOW_COPY(TempDir);

  fs::path path;
};

std::vector<std::string> readLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line))
    lines.push_back(line);
  return lines;
}

void writeLines(const std::string& path, const std::vector<std::string>& lines) {
  std::ofstream out(path, std::ios::trunc);
  for (auto& line : lines)
    out << line << '\n';
}

// Replaces the first `from` in `line` with `to`; fails the test when `from` is absent.
void replaceIn(std::string& line, const std::string& from, const std::string& to) {
  auto at = line.find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in " << line;
  line.replace(at, from.size(), to);
}

std::string sha256Hex(const std::string& text) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  static const char DIGITS[] = "0123456789abcdef";
  std::string hex;
  for (auto byte : digest) {
    hex += DIGITS[byte >> 4];
    hex += DIGITS[byte & 15];
  }
  return hex;
}

// What verify() says about the log at `path`; "" when it finds nothing wrong.
std::string problemIn(const std::string& path) {
  KJ_IF_MAYBE (problem, Log::verify(kj::StringPtr(path.c_str()))) {
    return toStd(*problem);
  }
  return "";
}

class AuditLog : public testing::Test {
protected:
  // A log with four entries: a load, a deploy, an unload and a rollback.
  std::string writeFourEntries() {
    Log log(kj::StringPtr(path.c_str()));
    log.append({"load", "echo", "", "1.0.0", "/data/packages/echo-1.0.0.so", "echo.so"});
    log.append({"deploy", "echo", "1.0.0", "2.0.0", "/data/packages/echo-2.0.0.so", "gen 3"});
    log.append({"unload", "echo", "1.0.0", "", "", "unmapped, drained 4, cut 0"});
    log.append({"rollback", "echo", "2.0.0", "1.0.0", "/data/packages/echo-1.0.0.so", "gen 5"});
    return path;
  }

  TempDir dir;
  // In a directory that does not exist yet: the log creates it.
  std::string path = (dir.path / "data" / "audit.log").native();
};

TEST_F(AuditLog, AppendsAndReadsBackInOrder) {
  auto before = kj::systemPreciseCalendarClock().now();
  Log log(kj::StringPtr(path.c_str()));
  EXPECT_EQ(log.size(), 0u);
  log.append({"deploy", "echo", "1.0.0", "2.0.0", "/data/packages/echo-2.0.0.so", "gen 3"});
  log.append({"refuse", "", "", "", "/plugins/bad.so", "not an ELF shared library"});
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(toStd(log.path()), path);

  auto first = log[0];
  EXPECT_EQ(first.getSequence(), 1u);
  EXPECT_EQ(toStd(first.getAction()), "deploy");
  EXPECT_EQ(toStd(first.getPlugin()), "echo");
  EXPECT_EQ(toStd(first.getFromVersion()), "1.0.0");
  EXPECT_EQ(toStd(first.getToVersion()), "2.0.0");
  EXPECT_EQ(toStd(first.getPackage()), "/data/packages/echo-2.0.0.so");
  EXPECT_EQ(toStd(first.getDetail()), "gen 3");
  auto sinceEpochMs = (before - kj::UNIX_EPOCH) / kj::MILLISECONDS;
  EXPECT_GE(first.getTimeUnixMs(), sinceEpochMs);
  EXPECT_LT(first.getTimeUnixMs(), sinceEpochMs + 60000);

  auto second = log[1];
  EXPECT_EQ(second.getSequence(), 2u);
  EXPECT_EQ(toStd(second.getAction()), "refuse");
  EXPECT_EQ(toStd(second.getDetail()), "not an ELF shared library");
  EXPECT_GE(second.getTimeUnixMs(), first.getTimeUnixMs());

  // One JSON line per entry, written before append() returned.
  auto lines = readLines(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(lines[0], HasSubstr("\"action\":\"deploy\""));
  EXPECT_THAT(lines[1], HasSubstr("\"detail\":\"not an ELF shared library\""));
}

TEST_F(AuditLog, EachEntrySealsTheOneBeforeIt) {
  writeFourEntries();
  Log log(kj::StringPtr(path.c_str()));
  ASSERT_EQ(log.size(), 4u);
  EXPECT_EQ(toStd(log[0].getPreviousHash()), "");
  for (size_t i = 0; i < log.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(log[i].getSequence(), i + 1);
    auto hash = toStd(log[i].getHash());
    EXPECT_EQ(hash.size(), 64u);
    EXPECT_EQ(hash.find_first_not_of("0123456789abcdef"), std::string::npos) << hash;
    if (i > 0) {
      EXPECT_EQ(toStd(log[i].getPreviousHash()), toStd(log[i - 1].getHash()));
    }
  }
  // Two entries with the same content still differ: each hash covers its predecessor.
  EXPECT_NE(toStd(log[0].getHash()), toStd(log[3].getHash()));
  EXPECT_EQ(problemIn(path), "");
}

TEST_F(AuditLog, ReopenReadsEverythingAndContinuesTheChain) {
  writeFourEntries();
  std::vector<std::string> hashes;
  {
    Log log(kj::StringPtr(path.c_str()));
    ASSERT_EQ(log.size(), 4u);
    for (size_t i = 0; i < log.size(); ++i)
      hashes.push_back(toStd(log[i].getHash()));
    EXPECT_EQ(toStd(log[3].getAction()), "rollback");
    EXPECT_EQ(toStd(log[3].getToVersion()), "1.0.0");
    log.append({"unload", "echo", "2.0.0", "", "", "unmapped"});
  }
  Log log(kj::StringPtr(path.c_str()));
  ASSERT_EQ(log.size(), 5u);
  for (size_t i = 0; i < hashes.size(); ++i)
    EXPECT_EQ(toStd(log[i].getHash()), hashes[i]);
  EXPECT_EQ(log[4].getSequence(), 5u);
  EXPECT_EQ(toStd(log[4].getPreviousHash()), hashes[3]);
  EXPECT_EQ(toStd(log[4].getFromVersion()), "2.0.0");
  EXPECT_EQ(problemIn(path), "");
}

TEST_F(AuditLog, VerifyAcceptsAMissingOrEmptyLog) {
  EXPECT_EQ(problemIn(path), "");
  Log log(kj::StringPtr(path.c_str()));
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(problemIn(path), "");
}

TEST_F(AuditLog, VerifyDetectsAnEditedField) {
  writeFourEntries();
  auto lines = readLines(path);
  replaceIn(lines[1], "\"toVersion\":\"2.0.0\"", "\"toVersion\":\"2.0.1\"");
  writeLines(path, lines);
  EXPECT_EQ(problemIn(path), path + ":2: hash mismatch (the entry was edited)");
}

TEST_F(AuditLog, VerifyDetectsAnEditedHash) {
  writeFourEntries();
  auto lines = readLines(path);
  auto hash = toStd(Log(kj::StringPtr(path.c_str()))[1].getHash());
  auto other = hash;
  other[0] = other[0] == '0' ? '1' : '0';
  replaceIn(lines[1], "\"hash\":\"" + hash + "\"", "\"hash\":\"" + other + "\"");
  writeLines(path, lines);
  EXPECT_EQ(problemIn(path), path + ":2: hash mismatch (the entry was edited)");
}

TEST_F(AuditLog, VerifyDetectsAnEditedEntryResealedWithItsOwnHash) {
  // Whoever edits an entry and computes a fresh hash for it, as the schema describes (SHA-256
  // over the previous hash, a newline and the entry's JSON with `hash` empty), still breaks the
  // link from the entry after it.
  writeFourEntries();
  auto lines = readLines(path);
  std::string previous, hash;
  {
    Log log(kj::StringPtr(path.c_str()));
    previous = toStd(log[1].getPreviousHash());
    hash = toStd(log[1].getHash());
  }
  // The recipe reproduces the stored hash of the entry as written.
  auto original = lines[1];
  replaceIn(original, "\"hash\":\"" + hash + "\"", "\"hash\":\"\"");
  ASSERT_EQ(sha256Hex(previous + "\n" + original), hash);

  replaceIn(lines[1], "\"toVersion\":\"2.0.0\"", "\"toVersion\":\"6.6.6\"");
  auto unsealed = lines[1];
  replaceIn(unsealed, "\"hash\":\"" + hash + "\"", "\"hash\":\"\"");
  auto resealed = sha256Hex(previous + "\n" + unsealed);
  replaceIn(lines[1], "\"hash\":\"" + hash + "\"", "\"hash\":\"" + resealed + "\"");
  writeLines(path, lines);
  EXPECT_THAT(problemIn(path), HasSubstr(path + ":3: does not follow the entry before it"));
}

TEST_F(AuditLog, VerifyDetectsARemovedLine) {
  writeFourEntries();
  auto lines = readLines(path);
  lines.erase(lines.begin() + 1);
  writeLines(path, lines);
  EXPECT_EQ(problemIn(path),
            path + ":2: sequence 3, expected 2 (an entry was removed or reordered)");

  // The first line removed, too.
  lines.erase(lines.begin());
  writeLines(path, lines);
  EXPECT_EQ(problemIn(path),
            path + ":1: sequence 3, expected 1 (an entry was removed or reordered)");
}

TEST_F(AuditLog, VerifyDetectsARemovedLineWithSequencesRenumbered) {
  writeFourEntries();
  auto lines = readLines(path);
  lines.erase(lines.begin() + 1);
  replaceIn(lines[1], "\"sequence\":\"3\"", "\"sequence\":\"2\"");
  replaceIn(lines[2], "\"sequence\":\"4\"", "\"sequence\":\"3\"");
  writeLines(path, lines);
  EXPECT_THAT(problemIn(path), HasSubstr(path + ":2: does not follow the entry before it"));
}

TEST_F(AuditLog, VerifyDetectsTwoSwappedLines) {
  writeFourEntries();
  auto lines = readLines(path);
  std::swap(lines[1], lines[2]);
  writeLines(path, lines);
  EXPECT_EQ(problemIn(path),
            path + ":2: sequence 3, expected 2 (an entry was removed or reordered)");

  // Swapped with their sequence numbers swapped back: the chain still breaks.
  replaceIn(lines[1], "\"sequence\":\"3\"", "\"sequence\":\"2\"");
  replaceIn(lines[2], "\"sequence\":\"2\"", "\"sequence\":\"3\"");
  writeLines(path, lines);
  EXPECT_THAT(problemIn(path), HasSubstr(path + ":2: does not follow the entry before it"));
}

TEST_F(AuditLog, VerifyDetectsATruncatedFile) {
  writeFourEntries();
  auto size = fs::file_size(path);
  // Cut in the middle of the last entry.
  fs::resize_file(path, size - 40);
  EXPECT_THAT(problemIn(path), HasSubstr(path + ":4: unreadable audit entry"));
}

TEST_F(AuditLog, ConstructorRefusesABrokenLogNamingTheLine) {
  writeFourEntries();
  auto lines = readLines(path);
  replaceIn(lines[2], "\"detail\":\"unmapped, drained 4, cut 0\"",
            "\"detail\":\"unmapped, drained 0, cut 0\"");
  writeLines(path, lines);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { Log log(kj::StringPtr(path.c_str())); })) {
    EXPECT_THAT(toStd(e->getDescription()), HasSubstr(path + ":3: hash mismatch"));
  } else {
    ADD_FAILURE() << "a broken log was accepted";
  }
  // Nothing was appended to it.
  EXPECT_EQ(readLines(path), lines);
}

TEST_F(AuditLog, VerifyDetectsEntriesCutFromTheEnd) {
  writeFourEntries();
  auto lines = readLines(path);
  // A valid chain, one entry shorter: only the head file shows it.
  lines.pop_back();
  writeLines(path, lines);
  EXPECT_EQ(problemIn(path), path + ": ends at sequence 3 but " + path +
                                 ".head records sequence 4 (entries were cut from the end)");
  // Everything gone but the head.
  fs::remove(path);
  EXPECT_EQ(problemIn(path),
            path + ": missing, but " + path + ".head records 4 entries (the log was deleted)");
  // Without its head file, a cut tail is a valid (shorter) log: the limit of the anchor.
  writeLines(path, lines);
  fs::remove(path + ".head");
  EXPECT_EQ(problemIn(path), "");
}

TEST_F(AuditLog, VerifyDetectsALogRewrittenPastTheHead) {
  writeFourEntries();
  auto head = readLines(path + ".head");
  // The last two entries replaced by a valid chain of other entries: same length, other hash.
  auto lines = readLines(path);
  lines.resize(2);
  writeLines(path, lines);
  fs::remove(path + ".head");
  {
    Log log(kj::StringPtr(path.c_str()));
    log.append({"unload", "echo", "1.0.0", "", "", "other"});
    log.append({"deploy", "echo", "1.0.0", "3.0.0", "", "other"});
  }
  writeLines(path + ".head", head);
  EXPECT_EQ(problemIn(path), path + ":4: sequence 4 is not the entry " + path +
                                 ".head records (the log was rewritten from here)");
}

TEST_F(AuditLog, RecordsWhoAndTheOutcome) {
  {
    Log log(kj::StringPtr(path.c_str()));
    log.append({"load", "echo", "", "1.0.0", "", ""});
    log.record("permission-denied", "uid=1000 pid=42", "refused", "admin socket");
    EXPECT_EQ(toStd(log[0].getActor()), "payhostd");
    EXPECT_EQ(toStd(log[0].getOutcome()), "ok");
    EXPECT_EQ(toStd(log[1].getAction()), "permission-denied");
    EXPECT_EQ(toStd(log[1].getActor()), "uid=1000 pid=42");
    EXPECT_EQ(toStd(log[1].getOutcome()), "refused");
  }
  // Sealed by the chain like every other field.
  auto lines = readLines(path);
  replaceIn(lines[1], "\"actor\":\"uid=1000 pid=42\"", "\"actor\":\"uid=0 pid=42\"");
  writeLines(path, lines);
  EXPECT_EQ(problemIn(path), path + ":2: hash mismatch (the entry was edited)");
}

TEST_F(AuditLog, AppendsFromManyThreadsKeepOneChain) {
  {
    Log log(kj::StringPtr(path.c_str()));
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&log, t]() {
        for (int i = 0; i < 10; ++i) {
          log.record("auth-failed", kj::str("thread-", t), "refused", kj::str(i));
        }
      });
    }
    for (auto& thread : threads)
      thread.join();
    EXPECT_EQ(log.size(), 40u);
  }
  EXPECT_EQ(problemIn(path), "");
  EXPECT_EQ(readLines(path).size(), 40u);
}

}  // namespace
}  // namespace payhost::test
