// Where a test keeps the files it writes, so that the card-number scan (tests/leak-scan), which
// CTest runs after every other test of a run, can search them all: logs, SQLite databases with
// their WAL and journal files, PostgreSQL data directories. CTest sets PAYHOST_TEST_ARTIFACTS on
// every test (tests/CMakeLists.txt); a test binary run by hand has it unset, makes its temporary
// directories under $TMPDIR and removes them as usual. Header-only; thread-safe.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace payhost::testsupport {

// The run's artifacts root, or empty when the files need not be kept.
inline std::filesystem::path testArtifactsRoot() {
  const char* root = std::getenv("PAYHOST_TEST_ARTIFACTS");
  return root == nullptr ? std::filesystem::path() : std::filesystem::path(root);
}

// Where to create a temporary directory: the artifacts root (created if missing) when set, else
// $TMPDIR, else /tmp.
inline std::filesystem::path testTempBase() {
  auto root = testArtifactsRoot();
  if (!root.empty()) {
    std::filesystem::create_directories(root);
    return root;
  }
  const char* tmp = std::getenv("TMPDIR");
  return tmp != nullptr && *tmp != '\0' ? std::filesystem::path(tmp)
                                        : std::filesystem::path("/tmp");
}

// Ends a test's use of its temporary directory `dir`: removes it, unless the run keeps its files
// for the scan. A kept directory made outside the root (/dev/shm, for speed) has its regular files
// copied under the root first, then is removed. Never throws: it runs in destructors.
inline void retireTestDir(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ignored;
  auto root = testArtifactsRoot();
  if (!root.empty()) {
    auto relative =
        fs::weakly_canonical(dir, ignored).lexically_relative(fs::weakly_canonical(root, ignored));
    if (!relative.empty() && *relative.begin() != "..") return;
    auto copy = root / "moved" / dir.filename();
    for (auto it = fs::recursive_directory_iterator(dir, ignored);
         it != fs::recursive_directory_iterator(); it.increment(ignored)) {
      if (!it->is_regular_file(ignored)) continue;
      auto target = copy / it->path().lexically_relative(dir);
      fs::create_directories(target.parent_path(), ignored);
      fs::copy_file(it->path(), target, fs::copy_options::overwrite_existing, ignored);
    }
  }
  fs::remove_all(dir, ignored);
}

}  // namespace payhost::testsupport
