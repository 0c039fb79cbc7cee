// The card-number scan: searches bytes, files and directory trees for card numbers.
//
// Two searches, reported with the file and byte offset of each hit:
// - known numbers: every card number the test sources use (`cardLiterals` collects them), found
//   anywhere, as digits alone or in the grouped form the source wrote ("4111 1111 1111 1111");
// - any card-shaped digit run: a maximal run of 13 to 19 ASCII digits that the vault would accept
//   as a card (a brand's prefix and length, and the Luhn check), unless it borders a hex letter
//   (part of a hash) or follows an allowlisted prefix (a seed, say). Timestamps, 64-bit limits and
//   ids start with digits no card brand uses, so they are not card-shaped.
//
// Hits name the number only by brand, first six and last four digits, so the report itself never
// puts a card number in a log. Not thread-safe; one Scanner per thread.

#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace payhost::leakscan {

struct Finding {
  std::string file;
  uint64_t offset = 0;
  std::string what;  // e.g. "known test card 411111...1111 (visa)"
};

// Counts of what a tree scan read, by kind of file.
struct Totals {
  uint64_t files = 0;
  uint64_t bytes = 0;
  uint64_t sqliteDatabases = 0;
  uint64_t sqliteWalOrJournals = 0;
  uint64_t logs = 0;
  uint64_t postgresFiles = 0;
  uint64_t postgresDataDirs = 0;
  uint64_t unreadable = 0;
};

// Card numbers written in `text` (source code): runs of 13 to 19 digits, optionally grouped by
// single spaces or dashes, whose prefix names a card brand (Luhn-valid or not: a refused input must
// not leak either). Each is returned as written and, if grouped, also as digits alone.
std::vector<std::string> cardLiterals(std::string_view text);

class Scanner {
public:
  // A number to find anywhere, as given (digits, or digits with spaces or dashes).
  void addKnownNumber(std::string number);
  // A card-shaped run directly after `prefix` is not reported (e.g. "SEED=").
  void allowPrefix(std::string prefix);
  // Reads an allowlist file: `prefix <text>` lines; `#` comments and blank lines are skipped.
  void readAllowlist(const std::filesystem::path& file);
  // Every `cardLiterals` of every source file (.cpp, .h, .toml, .sh, .txt, .py) under `dir`.
  void addKnownNumbersFromSources(const std::filesystem::path& dir);

  size_t knownNumbers() const { return known.size(); }

  // Appends a Finding for each hit in `bytes`, naming `file`.
  void scanBytes(std::string_view file, std::string_view bytes, std::vector<Finding>& findings);
  // One file, read whole.
  void scanFile(const std::filesystem::path& file, std::vector<Finding>& findings, Totals& totals);
  // Every regular file under `root` (symlinks are not followed).
  void scanTree(const std::filesystem::path& root, std::vector<Finding>& findings, Totals& totals);

private:
  std::vector<std::string> known;    // digits only
  std::vector<std::string> grouped;  // with spaces or dashes
  std::vector<std::string> allowedPrefixes;
};

// "brand 123456...1234", the only form in which the scan names a number.
std::string masked(std::string_view digits);

}  // namespace payhost::leakscan
