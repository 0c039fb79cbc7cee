// The card-number scan on planted files: it must find a number where one is (in a log, a grouped
// form, a deleted row of a real SQLite database or its WAL), name the file and offset, leave
// alone what only looks like digits (timestamps, hashes, allowlisted seeds), and the program
// CTest runs last must fail on a planted file. The planted files live outside the run's
// artifacts root and are removed at the end.
#include "leak-scan.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace payhost::leakscan {
namespace {

namespace fs = std::filesystem;

class PlantedDir {
public:
  PlantedDir()
      : path(fs::path(LEAK_SCAN_PLANTED_DIR) /
             testing::UnitTest::GetInstance()->current_test_info()->name()) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~PlantedDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }

  fs::path write(const std::string& name, const std::string& bytes) const {
    auto file = path / name;
    std::ofstream(file, std::ios::binary) << bytes;
    return file;
  }

  fs::path path;
};

std::vector<Finding> scan(Scanner& scanner, const std::string& bytes) {
  std::vector<Finding> findings;
  scanner.scanBytes("planted", bytes, findings);
  return findings;
}

TEST(CardLiterals, CollectsCardNumbersAsWrittenAndAsDigits) {
  auto found = cardLiterals(
      "tokenize(\"4111 1111 1111 1111\"); refuse(\"4111111111111112\"); "
      "amex(\"3782-822463-10005\"); INT64_MAX 9223372036854775807; 1000000000000000; "
      "{\"5555555555554444 6011111111111117\"}; 1234567890123456; 4111111111");
  std::vector<std::string> expected = {
      "4111 1111 1111 1111", "4111111111111111", "4111111111111112", "3782-822463-10005",
      "378282246310005",     "5555555555554444", "6011111111111117"};
  for (auto& number : expected) {
    EXPECT_NE(std::find(found.begin(), found.end(), number), found.end()) << number;
  }
  EXPECT_EQ(found.size(), expected.size());
}

TEST(Scanner, FindsAKnownNumberAndNamesItsOffsetWithoutPrintingIt) {
  Scanner scanner;
  scanner.addKnownNumber("4111111111111111");
  std::string log = "ts=1 event=vault.tokenize pan=4111111111111111 outcome=ok\n";
  auto findings = scan(scanner, log);
  ASSERT_EQ(findings.size(), 1u);
  EXPECT_EQ(findings[0].file, "planted");
  EXPECT_EQ(findings[0].offset, log.find("4111"));
  EXPECT_EQ(findings[0].what, "known test card visa 411111...1111");
  // Inside a longer digit run and in its grouped form too.
  EXPECT_EQ(scan(scanner, "id=99994111111111111111999999").size(), 1u);
  scanner.addKnownNumber("4111 1111 1111 1111");
  EXPECT_EQ(scan(scanner, "card \"4111 1111 1111 1111\"").size(), 1u);
  EXPECT_EQ(scan(scanner, "no card here: 4111 1111 1111 111").size(), 0u);
}

TEST(Scanner, FindsCardShapedRunsItWasNotToldAbout) {
  Scanner scanner;
  // Luhn-valid Visa, Mastercard (2-series), Amex: none of them known to the scanner.
  for (std::string number : {"4012888888881881", "2223000048400011", "371449635398431"}) {
    auto findings = scan(scanner, "x=" + number + ";");
    ASSERT_EQ(findings.size(), 1u) << number;
    EXPECT_EQ(findings[0].offset, 2u);
    EXPECT_NE(findings[0].what.find("card-shaped"), std::string::npos);
  }
}

TEST(Scanner, LeavesTimestampsHashesLimitsAndAllowlistedRunsAlone) {
  Scanner scanner;
  scanner.allowPrefix("SEED=");
  EXPECT_EQ(scan(scanner, "4012888888881882").size(), 0u);  // fails the Luhn check
  EXPECT_EQ(scan(scanner, "ts_ms=1764254850123 ts_ns=1764254850123456789").size(), 0u);
  EXPECT_EQ(scan(scanner, "max=9223372036854775807").size(), 0u);
  EXPECT_EQ(scan(scanner, "sha256=ab4012888888881881cd").size(), 0u);
  EXPECT_EQ(scan(scanner, "PAYMENTS_SEED=4012888888881881").size(), 0u);
  EXPECT_EQ(scan(scanner, "401288888888").size(), 0u);  // 12 digits
  EXPECT_EQ(scan(scanner, "SEEDS=4012888888881881").size(), 1u);
}

void exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  ASSERT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, &error), SQLITE_OK) << error;
}

TEST(Scanner, FindsANumberDeletedFromARealSqliteDatabaseInTheFileOrItsWal) {
  PlantedDir dir;
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir.path / "careless.sqlite").c_str(), &db), SQLITE_OK);
  exec(db, "PRAGMA journal_mode=WAL");
  exec(db, "CREATE TABLE cards (pan TEXT)");
  exec(db, "INSERT INTO cards VALUES ('5555555555554444')");
  exec(db, "DELETE FROM cards");
  Scanner scanner;
  scanner.addKnownNumber("5555555555554444");
  std::vector<Finding> findings;
  Totals totals;
  scanner.scanTree(dir.path, findings, totals);
  sqlite3_close(db);
  EXPECT_EQ(totals.sqliteDatabases, 1u);
  EXPECT_EQ(totals.sqliteWalOrJournals, 1u);
  ASSERT_GE(findings.size(), 1u);
  EXPECT_NE(findings[0].file.find("careless.sqlite"), std::string::npos) << findings[0].file;
}

int run(const std::string& command, std::string& output) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0)
    output.append(buffer, n);
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(CardNumberScan, FailsOnAPlantedFileNamingItAndPassesOnACleanTree) {
  PlantedDir dir;
  fs::create_directories(dir.path / "sources");
  dir.write("sources/test.cpp", "tokenize(\"6011 1111 1111 1117\");\n");
  fs::create_directories(dir.path / "root/run/data");
  dir.write("root/run/data/payhostd.log", "ts=1764254850123 event=host.ready\n");
  auto command = std::string(CARD_NUMBER_SCAN) + " --root " + (dir.path / "root").native() +
                 " --sources " + (dir.path / "sources").native();
  std::string clean;
  EXPECT_EQ(run(command, clean), 0) << clean;
  EXPECT_NE(clean.find("1 files"), std::string::npos) << clean;
  EXPECT_NE(clean.find("1 logs"), std::string::npos) << clean;

  auto leaked = dir.write("root/run/data/plugin.log", "event=careless pan=6011111111111117\n");
  std::string output;
  EXPECT_EQ(run(command + " --remove-when-clean", output), 1) << output;
  EXPECT_NE(output.find(leaked.native() + ": offset 19: known test card discover 601111...1117"),
            std::string::npos)
      << output;
  EXPECT_EQ(output.find("6011111111111117"), std::string::npos) << "the report repeats the number";
  EXPECT_TRUE(fs::exists(leaked)) << "a failed scan keeps the files";

  fs::remove(leaked);
  std::string again;
  EXPECT_EQ(run(command + " --remove-when-clean", again), 0) << again;
  EXPECT_FALSE(fs::exists(dir.path / "root")) << "a clean scan removes the root when asked";
}

}  // namespace
}  // namespace payhost::leakscan
