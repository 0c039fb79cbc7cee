// payhost-card-number-scan: the last test of every CTest run. Searches every file the run's tests
// kept under the artifacts root (their logs, SQLite databases with WAL and journal files,
// PostgreSQL data directories) and CTest's own log of test output for the card numbers the test
// sources use and for any card-shaped digit run (leak-scan.h says which). Exit 0 when none is
// found (the root is then removed if asked), 1 naming each file and offset, 2 on bad usage.
//
//   payhost-card-number-scan --root DIR [--file FILE]... --sources DIR... [--allowlist FILE]
//                            [--remove-when-clean]
#include <kj/exception.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "leak-scan.h"

namespace fs = std::filesystem;
using namespace payhost::leakscan;

int main(int argc, char** argv) {
  fs::path root;
  std::vector<fs::path> files, sources, allowlists;
  bool removeWhenClean = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg != "--remove-when-clean" && i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", arg.c_str());
      return 2;
    }
    auto value = [&]() -> fs::path { return argv[++i]; };
    if (arg == "--root") {
      root = value();
    } else if (arg == "--file") {
      files.push_back(value());
    } else if (arg == "--sources") {
      sources.push_back(value());
    } else if (arg == "--allowlist") {
      allowlists.push_back(value());
    } else if (arg == "--remove-when-clean") {
      removeWhenClean = true;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  if (root.empty() || sources.empty()) {
    std::fprintf(stderr,
                 "usage: %s --root DIR --sources DIR... [--file FILE]... "
                 "[--allowlist FILE] [--remove-when-clean]\n",
                 argv[0]);
    return 2;
  }

  std::vector<Finding> findings;
  Totals totals;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 Scanner scanner;
                 for (auto& dir : sources)
                   scanner.addKnownNumbersFromSources(dir);
                 for (auto& file : allowlists)
                   scanner.readAllowlist(file);
                 std::printf("card-number scan: %zu known card numbers from the test sources\n",
                             scanner.knownNumbers());
                 if (fs::is_directory(root)) scanner.scanTree(root, findings, totals);
                 for (auto& file : files) {
                   if (fs::is_regular_file(file)) scanner.scanFile(file, findings, totals);
                 }
               })) {
    std::fprintf(stderr, "card-number scan failed: %s\n", e->getDescription().cStr());
    return 2;
  }

  std::printf(
      "card-number scan of %s: %llu files, %.1f MB: %llu SQLite databases, %llu WAL or journal "
      "files, %llu logs, %llu files in %llu PostgreSQL data directories\n",
      root.c_str(), static_cast<unsigned long long>(totals.files),
      static_cast<double>(totals.bytes) / 1e6,
      static_cast<unsigned long long>(totals.sqliteDatabases),
      static_cast<unsigned long long>(totals.sqliteWalOrJournals),
      static_cast<unsigned long long>(totals.logs),
      static_cast<unsigned long long>(totals.postgresFiles),
      static_cast<unsigned long long>(totals.postgresDataDirs));
  for (auto& finding : findings) {
    std::printf("%s: offset %llu: %s\n", finding.file.c_str(),
                static_cast<unsigned long long>(finding.offset), finding.what.c_str());
  }
  if (!findings.empty()) {
    std::printf("card-number scan: %zu card numbers found; the files are kept for inspection\n",
                findings.size());
    return 1;
  }
  std::printf("card-number scan: no card number found\n");
  if (removeWhenClean) {
    std::error_code ignored;
    fs::remove_all(root, ignored);
  }
  return 0;
}
