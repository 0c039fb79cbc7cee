#include "host/log/logger.h"

#include "host/config/daemon-config.h"

#include <kj/debug.h>

#include <gtest/gtest.h>

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "tests/support/test-artifacts.h"

namespace payhost::host {
namespace {

constexpr kj::StringPtr TS = "2026-11-27T09:41:02.113Z"_kj;

std::string toStd(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

std::string render(LogFormat format, LogLevel level, kj::StringPtr event,
                   std::initializer_list<LogField> fixed, std::initializer_list<LogField> fields) {
  return toStd(renderLogRecord(format, TS, level, event, kj::arrayPtr(fixed.begin(), fixed.size()),
                               kj::arrayPtr(fields.begin(), fields.size())));
}

std::string logfmt(kj::StringPtr event, std::initializer_list<LogField> fields) {
  return render(LogFormat::LOGFMT, LogLevel::INFO, event, {}, fields);
}

// A strict reader for the one JSON shape the logger writes: a flat object of string members.
// Returns the members in order, or fails the test (and returns what it read) on anything that
// is not valid JSON.
class FlatJsonObject {
public:
  explicit FlatJsonObject(const std::string& text) : text(text) {
    expect('{');
    if (peek() != '}') {
      do {
        auto key = string();
        expect(':');
        auto value = string();
        members.emplace_back(kj::mv(key), kj::mv(value));
      } while (ok && accept(','));
    }
    expect('}');
    if (ok && at != text.size()) fail("trailing characters");
  }

  bool ok = true;
  std::string error;
  std::vector<std::pair<std::string, std::string>> members;

private:
  const std::string& text;
  size_t at = 0;

  void fail(const std::string& why) {
    if (ok) error = why + " at offset " + std::to_string(at);
    ok = false;
  }
  char peek() const { return at < text.size() ? text[at] : '\0'; }
  bool accept(char c) {
    if (peek() != c) return false;
    ++at;
    return true;
  }
  void expect(char c) {
    if (ok && !accept(c)) fail(std::string("expected '") + c + "'");
  }
  static int hexValue(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  void appendUtf8(std::string& out, uint32_t code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xc0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3f));
    } else {
      out += static_cast<char>(0xe0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (code & 0x3f));
    }
  }
  std::string string() {
    std::string out;
    expect('"');
    while (ok) {
      if (at >= text.size()) {
        fail("unterminated string");
        break;
      }
      char c = text[at++];
      if (c == '"') break;
      if (static_cast<unsigned char>(c) < 0x20) {
        fail("raw control character in a string");
        break;
      }
      if (c != '\\') {
        out += c;
        continue;
      }
      char e = peek();
      ++at;
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          uint32_t code = 0;
          for (int i = 0; i < 4; ++i) {
            int digit = hexValue(peek());
            if (digit < 0) {
              fail("bad \\u escape");
              return out;
            }
            code = code * 16 + digit;
            ++at;
          }
          appendUtf8(out, code);
          break;
        }
        default:
          fail(std::string("bad escape '\\") + e + "'");
      }
    }
    return out;
  }
};

// --------------------------------------------------------------------------------------------
// logfmt

TEST(RenderLogRecord, LogfmtPlainRecord) {
  EXPECT_EQ(render(LogFormat::LOGFMT, LogLevel::WARNING, "plugin.loaded",
                   {{"plugin", "card-processor"}, {"version", "1.0.0"}}, {{"shard", "3"}}),
            "ts=2026-11-27T09:41:02.113Z level=warning event=plugin.loaded "
            "plugin=card-processor version=1.0.0 shard=3");
}

TEST(RenderLogRecord, LogfmtFixedFieldsComeBeforeRecordFields) {
  EXPECT_EQ(render(LogFormat::LOGFMT, LogLevel::INFO, "e", {{"z", "1"}, {"a", "2"}},
                   {{"m", "3"}, {"b", "4"}}),
            "ts=2026-11-27T09:41:02.113Z level=info event=e z=1 a=2 m=3 b=4");
}

TEST(RenderLogRecord, LogfmtQuotesValuesThatNeedIt) {
  const std::string prefix = "ts=2026-11-27T09:41:02.113Z level=info event=e ";
  EXPECT_EQ(logfmt("e", {{"k", "two words"}}), prefix + "k=\"two words\"");
  EXPECT_EQ(logfmt("e", {{"k", "say \"hi\""}}), prefix + "k=\"say \\\"hi\\\"\"");
  EXPECT_EQ(logfmt("e", {{"k", "line\nbreak"}}), prefix + "k=\"line\\nbreak\"");
  EXPECT_EQ(logfmt("e", {{"k", "tab\there"}}), prefix + "k=\"tab\\there\"");
  EXPECT_EQ(logfmt("e", {{"k", "cr\rhere"}}), prefix + "k=\"cr\\rhere\"");
  EXPECT_EQ(logfmt("e", {{"k", "bell\x07"}}), prefix + "k=\"bell\\u0007\"");
  EXPECT_EQ(logfmt("e", {{"k", "del\x7f"}}), prefix + "k=\"del\\u007f\"");
  EXPECT_EQ(logfmt("e", {{"k", "a=b"}}), prefix + "k=\"a=b\"");
  EXPECT_EQ(logfmt("e", {{"k", "back\\slash"}}), prefix + "k=\"back\\\\slash\"");
  EXPECT_EQ(logfmt("e", {{"k", ""}}), prefix + "k=\"\"");
}

TEST(RenderLogRecord, LogfmtKeysCannotForgeFieldsOrRecords) {
  const std::string prefix = "ts=2026-11-27T09:41:02.113Z level=info event=e ";
  EXPECT_EQ(logfmt("e", {{"a b", "1"}}), prefix + "a_b=1");
  EXPECT_EQ(logfmt("e", {{"x=1 level", "error"}}), prefix + "x_1_level=error");
  EXPECT_EQ(logfmt("e", {{"k\nts", "2"}}), prefix + "k_ts=2");
  EXPECT_EQ(logfmt("e", {{"", "3"}}), prefix + "_=3");
  EXPECT_EQ(logfmt("e", {{"card.last4-x_y", "4"}}), prefix + "card.last4-x_y=4");
}

TEST(RenderLogRecord, LogfmtLeavesPlainValuesBare) {
  EXPECT_EQ(logfmt("e", {{"k", "tok_4242:last4-1234/x.y"}}),
            "ts=2026-11-27T09:41:02.113Z level=info event=e k=tok_4242:last4-1234/x.y");
}

TEST(RenderLogRecord, LogfmtEscapesAnEmbeddedNul) {
  LogField field{"k", kj::StringPtr("a\0b", 3)};
  EXPECT_EQ(toStd(renderLogRecord(LogFormat::LOGFMT, TS, LogLevel::INFO, "e", nullptr,
                                  kj::arrayPtr(&field, 1))),
            "ts=2026-11-27T09:41:02.113Z level=info event=e k=\"a\\u0000b\"");
}

TEST(RenderLogRecord, LogfmtQuotesAnEventThatNeedsIt) {
  EXPECT_EQ(logfmt("two words", {}), "ts=2026-11-27T09:41:02.113Z level=info event=\"two words\"");
}

TEST(RenderLogRecord, LogfmtRecordIsOneLine) {
  auto line = logfmt("a\nb", {{"k", "x\ny"}, {"j", "\r\n"}});
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  EXPECT_EQ(line.find('\r'), std::string::npos) << line;
}

// --------------------------------------------------------------------------------------------
// JSON

TEST(RenderLogRecord, JsonPlainRecord) {
  EXPECT_EQ(render(LogFormat::JSON, LogLevel::ERROR, "plugin.refused", {{"plugin", "card"}},
                   {{"reason", "abi"}}),
            "{\"ts\":\"2026-11-27T09:41:02.113Z\",\"level\":\"error\",\"event\":\"plugin.refused\","
            "\"plugin\":\"card\",\"reason\":\"abi\"}");
}

TEST(RenderLogRecord, JsonEmptyValue) {
  EXPECT_EQ(render(LogFormat::JSON, LogLevel::DEBUG, "e", {}, {{"k", ""}}),
            "{\"ts\":\"2026-11-27T09:41:02.113Z\",\"level\":\"debug\",\"event\":\"e\",\"k\":\"\"}");
}

TEST(RenderLogRecord, JsonTrickyValuesParseBackUnchanged) {
  std::string nul("nul\0byte", 8);
  std::vector<std::string> values = {
      "",
      "two words",
      "say \"hi\"",
      "back\\slash",
      "line\nbreak\r\n",
      "tab\there",
      "bell\x07\x01",
      "del\x7f",
      "a=b",
      "{\"json\":[1]}",
      nul,
      "caf\xc3\xa9 \xe2\x82\xac",
      "</script>",
  };
  std::vector<LogField> fields;
  std::vector<std::string> keys;
  for (size_t i = 0; i < values.size(); ++i)
    keys.push_back("k" + std::to_string(i));
  for (size_t i = 0; i < values.size(); ++i) {
    fields.push_back(LogField{kj::StringPtr(keys[i].c_str(), keys[i].size()),
                              kj::StringPtr(values[i].c_str(), values[i].size())});
  }
  LogField fixed[] = {{"key \"quoted\"\n", "fixed"}};
  auto line =
      toStd(renderLogRecord(LogFormat::JSON, TS, LogLevel::INFO, "ev\"ent\n",
                            kj::arrayPtr(fixed, 1), kj::arrayPtr(fields.data(), fields.size())));

  FlatJsonObject json(line);
  ASSERT_TRUE(json.ok) << json.error << "\n" << line;
  ASSERT_EQ(json.members.size(), 4 + values.size()) << line;
  EXPECT_EQ(json.members[0], std::make_pair(std::string("ts"), toStd(TS)));
  EXPECT_EQ(json.members[1], std::make_pair(std::string("level"), std::string("info")));
  EXPECT_EQ(json.members[2], std::make_pair(std::string("event"), std::string("ev\"ent\n")));
  EXPECT_EQ(json.members[3], std::make_pair(std::string("key \"quoted\"\n"), std::string("fixed")));
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(json.members[4 + i].first, keys[i]);
    EXPECT_EQ(json.members[4 + i].second, values[i]) << "value " << i;
  }
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
}

TEST(RenderLogRecord, JsonCheckerRejectsInvalidJson) {
  // The checker above must be able to fail, or the test before proves nothing.
  EXPECT_FALSE(FlatJsonObject("{\"a\":\"x\ny\"}").ok);
  EXPECT_FALSE(FlatJsonObject("{\"a\":\"\\q\"}").ok);
  EXPECT_FALSE(FlatJsonObject("{\"a\":\"x\"").ok);
  EXPECT_FALSE(FlatJsonObject("{\"a\":\"x\"}}").ok);
  EXPECT_FALSE(FlatJsonObject("{\"a\" \"x\"}").ok);
  EXPECT_TRUE(FlatJsonObject("{\"a\":\"\\u0041\"}").ok);
}

// --------------------------------------------------------------------------------------------
// LogSink and ScopedLogger, writing to a file

class TempDir {
public:
  TempDir() {
    std::string pattern = (testsupport::testTempBase() / "payhost-log-test-XXXXXX").native();
    KJ_REQUIRE(mkdtemp(pattern.data()) != nullptr, "mkdtemp failed", pattern);
    path_ = pattern;
  }
  ~TempDir() { testsupport::retireTestDir(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
  std::string path_;
};

std::vector<std::string> readLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line))
    lines.push_back(line);
  return lines;
}

// "ts=<UTC timestamp with milliseconds> " followed by `rest`.
::testing::AssertionResult isLogfmtLine(const std::string& line, const std::string& rest) {
  static const std::regex timestamp(
      "^ts=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
      "\\.[0-9]{3}Z ");
  std::smatch match;
  if (!std::regex_search(line, match, timestamp)) {
    return ::testing::AssertionFailure() << "no timestamp in: " << line;
  }
  if (line.substr(match.length()) != rest) {
    return ::testing::AssertionFailure() << "got: " << line << "\nwanted: ts=... " << rest;
  }
  return ::testing::AssertionSuccess();
}

TEST(LogSink, KeepsRecordsAtOrAboveItsMinimum) {
  TempDir dir;
  auto path = dir.file("payhostd.log");
  {
    LogSink sink(LogLevel::WARNING, LogFormat::LOGFMT, kj::StringPtr(path.c_str()));
    EXPECT_FALSE(sink.enabled(LogLevel::DEBUG));
    EXPECT_FALSE(sink.enabled(LogLevel::INFO));
    EXPECT_TRUE(sink.enabled(LogLevel::WARNING));
    EXPECT_TRUE(sink.enabled(LogLevel::ERROR));
    sink.write(LogLevel::DEBUG, "d", nullptr, nullptr);
    sink.write(LogLevel::INFO, "i", nullptr, nullptr);
    sink.write(LogLevel::WARNING, "w", nullptr, nullptr);
    sink.write(LogLevel::ERROR, "e", nullptr, nullptr);
    sink.flush();
  }
  auto lines = readLines(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_TRUE(isLogfmtLine(lines[0], "level=warning event=w"));
  EXPECT_TRUE(isLogfmtLine(lines[1], "level=error event=e"));
}

TEST(LogSink, SetMinimumTakesEffect) {
  TempDir dir;
  auto path = dir.file("payhostd.log");
  {
    LogSink sink(LogLevel::ERROR, LogFormat::LOGFMT, kj::StringPtr(path.c_str()));
    sink.write(LogLevel::INFO, "before", nullptr, nullptr);
    sink.setMinimum(LogLevel::DEBUG);
    EXPECT_TRUE(sink.enabled(LogLevel::DEBUG));
    sink.write(LogLevel::DEBUG, "after", nullptr, nullptr);
  }
  auto lines = readLines(path);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_TRUE(isLogfmtLine(lines[0], "level=debug event=after"));
}

TEST(LogSink, AppendsToAnExistingFile) {
  TempDir dir;
  auto path = dir.file("payhostd.log");
  {
    std::ofstream out(path);
    out << "earlier line\n";
  }
  {
    LogSink sink(LogLevel::INFO, LogFormat::LOGFMT, kj::StringPtr(path.c_str()));
    sink.write(LogLevel::INFO, "started", nullptr, nullptr);
  }
  auto lines = readLines(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "earlier line");
  EXPECT_TRUE(isLogfmtLine(lines[1], "level=info event=started"));
}

TEST(LogSink, WritesJsonLines) {
  TempDir dir;
  auto path = dir.file("payhostd.log");
  {
    LogSink sink(LogLevel::INFO, LogFormat::JSON, kj::StringPtr(path.c_str()));
    LogField fields[] = {{"reason", "line\nbreak"}};
    sink.write(LogLevel::INFO, "e", nullptr, kj::arrayPtr(fields, 1));
  }
  auto lines = readLines(path);
  ASSERT_EQ(lines.size(), 1u);
  FlatJsonObject json(lines[0]);
  ASSERT_TRUE(json.ok) << json.error << "\n" << lines[0];
  ASSERT_EQ(json.members.size(), 4u);
  EXPECT_EQ(json.members[3].second, "line\nbreak");
}

TEST(ScopedLogger, AddsItsFixedFieldsToEveryRecord) {
  TempDir dir;
  auto path = dir.file("payhostd.log");
  {
    LogSink sink(LogLevel::DEBUG, LogFormat::LOGFMT, kj::StringPtr(path.c_str()));
    ScopedLogger logger(sink, {{"plugin", "echo"}, {"version", "1.0.0"}, {"shard", "0"}});
    logger.info("echo.started");
    logger.warning("echo.slow", {{"ms", "120"}});
  }
  auto lines = readLines(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_TRUE(isLogfmtLine(lines[0],
                           "level=info event=echo.started plugin=echo version=1.0.0 "
                           "shard=0"));
  EXPECT_TRUE(isLogfmtLine(lines[1],
                           "level=warning event=echo.slow plugin=echo version=1.0.0 "
                           "shard=0 ms=120"));
}

TEST(ScopedLogger, CopiesItsFixedFields) {
  TempDir dir;
  auto path = dir.file("payhostd.log");
  {
    LogSink sink(LogLevel::DEBUG, LogFormat::LOGFMT, kj::StringPtr(path.c_str()));
    std::string key = "plugin";
    std::string value = "echo";
    ScopedLogger logger(sink, {{kj::StringPtr(key.c_str()), kj::StringPtr(value.c_str())}});
    key.assign("XXXXXX");
    value.assign("YYYY");
    logger.info("e");
  }
  auto lines = readLines(path);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_TRUE(isLogfmtLine(lines[0], "level=info event=e plugin=echo"));
}

TEST(ScopedLogger, FollowsItsSinksMinimum) {
  TempDir dir;
  auto path = dir.file("payhostd.log");
  {
    LogSink sink(LogLevel::WARNING, LogFormat::LOGFMT, kj::StringPtr(path.c_str()));
    ScopedLogger logger(sink, {{"plugin", "echo"}});
    EXPECT_FALSE(logger.enabled(LogLevel::INFO));
    EXPECT_TRUE(logger.enabled(LogLevel::WARNING));
    logger.info("dropped");
    logger.error("kept");
  }
  auto lines = readLines(path);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_TRUE(isLogfmtLine(lines[0], "level=error event=kept plugin=echo"));
}

}  // namespace
}  // namespace payhost::host
