#include "leak-scan.h"

#include <kj/debug.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "card-number.h"

namespace payhost::leakscan {

namespace fs = std::filesystem;
using plugins::vault::Brand;

namespace {

constexpr size_t MIN_DIGITS = 13;
constexpr size_t MAX_DIGITS = 19;

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}

bool isHexLetter(char c) {
  return (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

kj::ArrayPtr<const char> view(std::string_view digits) {
  return kj::arrayPtr(digits.data(), digits.size());
}

std::string digitsOf(std::string_view text) {
  std::string digits;
  for (char c : text) {
    if (isDigit(c)) digits += c;
  }
  return digits;
}

kj::StringPtr brandName(std::string_view digits) {
  return plugins::vault::nameOf(plugins::vault::brandOf(view(digits)));
}

// What the vault would accept as a card number: a brand's prefix and length, and the Luhn check.
bool cardShaped(std::string_view digits) {
  auto brand = plugins::vault::brandOf(view(digits));
  return brand != Brand::OTHER && plugins::vault::lengthValid(brand, digits.size()) &&
         plugins::vault::luhnValid(view(digits));
}

bool hasBrandPrefix(std::string_view digits) {
  return plugins::vault::brandOf(view(digits)) != Brand::OTHER;
}

bool endsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

void addUnique(std::vector<std::string>& list, std::string item) {
  if (std::find(list.begin(), list.end(), item) == list.end()) list.push_back(std::move(item));
}

}  // namespace

std::string masked(std::string_view digits) {
  std::string out(brandName(digits).cStr());
  if (digits.size() < 10) return out + " (short)";
  out += ' ';
  out += digits.substr(0, 6);
  out += "...";
  out += digits.substr(digits.size() - 4);
  return out;
}

std::vector<std::string> cardLiterals(std::string_view text) {
  std::vector<std::string> found;
  size_t i = 0;
  while (i < text.size()) {
    if (!isDigit(text[i]) || (i > 0 && isDigit(text[i - 1]))) {
      ++i;
      continue;
    }
    // A maximal group of digit runs joined by single spaces or dashes.
    size_t end = i;
    bool separated = false;
    for (;;) {
      size_t runStart = end;
      while (end < text.size() && isDigit(text[end]))
        ++end;
      auto run = text.substr(runStart, end - runStart);
      if (run.size() >= MIN_DIGITS && run.size() <= MAX_DIGITS && hasBrandPrefix(run)) {
        addUnique(found, std::string(run));
      }
      if (end + 1 < text.size() && (text[end] == ' ' || text[end] == '-') &&
          isDigit(text[end + 1])) {
        separated = true;
        ++end;
        continue;
      }
      break;
    }
    auto literal = text.substr(i, end - i);
    auto digits = digitsOf(literal);
    if (separated && digits.size() >= MIN_DIGITS && digits.size() <= MAX_DIGITS &&
        hasBrandPrefix(digits)) {
      addUnique(found, std::string(literal));
      addUnique(found, digits);
    }
    i = end;
  }
  return found;
}

void Scanner::addKnownNumber(std::string number) {
  if (number.find_first_not_of("0123456789") == std::string::npos) {
    addUnique(known, std::move(number));
  } else {
    addUnique(known, digitsOf(number));
    addUnique(grouped, std::move(number));
  }
}

void Scanner::allowPrefix(std::string prefix) {
  KJ_REQUIRE(!prefix.empty(), "an allowlisted prefix must not be empty");
  allowedPrefixes.push_back(std::move(prefix));
}

void Scanner::readAllowlist(const fs::path& file) {
  std::ifstream in(file);
  KJ_REQUIRE(in.good(), "cannot read the allowlist", file.c_str());
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty() || line[0] == '#') continue;
    constexpr std::string_view PREFIX = "prefix ";
    KJ_REQUIRE(line.rfind(PREFIX, 0) == 0 && line.size() > PREFIX.size(),
               "allowlist lines are `prefix <text>`", file.c_str(), number);
    allowPrefix(line.substr(PREFIX.size()));
  }
}

void Scanner::addKnownNumbersFromSources(const fs::path& dir) {
  for (auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    auto extension = entry.path().extension().native();
    if (extension != ".cpp" && extension != ".h" && extension != ".toml" && extension != ".sh" &&
        extension != ".txt" && extension != ".py") {
      continue;
    }
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    for (auto& literal : cardLiterals(text.str()))
      addKnownNumber(literal);
  }
}

void Scanner::scanBytes(std::string_view file, std::string_view bytes,
                        std::vector<Finding>& findings) {
  for (auto& number : grouped) {
    for (size_t at = bytes.find(number); at != std::string_view::npos;
         at = bytes.find(number, at + 1)) {
      findings.push_back({std::string(file), at, "known test card " + masked(digitsOf(number))});
    }
  }
  size_t i = 0;
  while (i < bytes.size()) {
    if (!isDigit(bytes[i])) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < bytes.size() && isDigit(bytes[end]))
      ++end;
    auto run = bytes.substr(i, end - i);
    if (run.size() >= MIN_DIGITS) {
      bool knownHit = false;
      for (auto& number : known) {
        for (size_t at = run.find(number); at != std::string_view::npos;
             at = run.find(number, at + 1)) {
          findings.push_back({std::string(file), i + at, "known test card " + masked(number)});
          knownHit = true;
        }
      }
      bool hexNeighbour =
          (i > 0 && isHexLetter(bytes[i - 1])) || (end < bytes.size() && isHexLetter(bytes[end]));
      bool allowed = false;
      for (auto& prefix : allowedPrefixes) {
        if (endsWith(bytes.substr(0, i), prefix)) allowed = true;
      }
      if (!knownHit && !hexNeighbour && !allowed && run.size() <= MAX_DIGITS && cardShaped(run)) {
        findings.push_back(
            {std::string(file), i, "card-shaped digit run (Luhn-valid) " + masked(run)});
      }
    }
    i = end;
  }
}

void Scanner::scanFile(const fs::path& file, std::vector<Finding>& findings, Totals& totals) {
  std::string bytes;
  int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
  bool ok = fd >= 0;
  if (ok) {
    struct stat info;
    ok = fstat(fd, &info) == 0;
    if (ok) bytes.resize(static_cast<size_t>(info.st_size));
    size_t done = 0;
    while (ok && done < bytes.size()) {
      ssize_t n = read(fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      ok = n > 0;
      if (ok) done += static_cast<size_t>(n);
    }
    close(fd);
  }
  if (!ok) {
    ++totals.unreadable;
    findings.push_back({file.native(), 0, "cannot be read, so cannot be checked"});
    return;
  }
  ++totals.files;
  totals.bytes += bytes.size();
  auto name = file.filename().native();
  if (bytes.compare(0, 16, std::string_view("SQLite format 3\0", 16)) == 0) {
    ++totals.sqliteDatabases;
  } else if (endsWith(name, "-wal") || endsWith(name, "-journal")) {
    ++totals.sqliteWalOrJournals;
  } else if (endsWith(name, ".log")) {
    ++totals.logs;
  }
  scanBytes(file.native(), bytes, findings);
}

void Scanner::scanTree(const fs::path& root, std::vector<Finding>& findings, Totals& totals) {
  // PostgreSQL data directories are recognised by their PG_VERSION file, for the totals.
  std::vector<fs::path> postgresDirs;
  auto options = fs::directory_options::skip_permission_denied;
  for (auto it = fs::recursive_directory_iterator(root, options);
       it != fs::recursive_directory_iterator(); ++it) {
    auto& entry = *it;
    if (entry.is_symlink() || !entry.is_regular_file()) continue;
    if (entry.path().filename() == "PG_VERSION" &&
        entry.path().parent_path().filename() != "base" &&
        entry.path().parent_path().parent_path().filename() != "base") {
      postgresDirs.push_back(entry.path().parent_path());
    }
    scanFile(entry.path(), findings, totals);
  }
  totals.postgresDataDirs = postgresDirs.size();
  for (auto& entry : fs::recursive_directory_iterator(root, options)) {
    if (!entry.is_regular_file() || entry.is_symlink()) continue;
    for (auto& dir : postgresDirs) {
      auto relative = entry.path().lexically_relative(dir);
      if (!relative.empty() && *relative.begin() != "..") {
        ++totals.postgresFiles;
        break;
      }
    }
  }
}

}  // namespace payhost::leakscan
