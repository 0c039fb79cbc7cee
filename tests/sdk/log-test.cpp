#include <payhost/log.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace payhost {
namespace {

std::string toStd(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

TEST(LogLevel, NamesEachLevel) {
  EXPECT_EQ(toStd(logLevelName(LogLevel::DEBUG)), "debug");
  EXPECT_EQ(toStd(logLevelName(LogLevel::INFO)), "info");
  EXPECT_EQ(toStd(logLevelName(LogLevel::WARNING)), "warning");
  EXPECT_EQ(toStd(logLevelName(LogLevel::ERROR)), "error");
}

TEST(LogLevel, ParsesEachName) {
  for (auto level : {LogLevel::DEBUG, LogLevel::INFO, LogLevel::WARNING, LogLevel::ERROR}) {
    KJ_IF_MAYBE (parsed, tryParseLogLevel(logLevelName(level))) {
      EXPECT_EQ(*parsed, level);
    } else {
      ADD_FAILURE() << "cannot parse " << logLevelName(level).cStr();
    }
  }
}

TEST(LogLevel, RefusesUnknownNames) {
  for (const char* name : {"", "verbose", "warn", "info ", "trace", "fatal"}) {
    EXPECT_TRUE(tryParseLogLevel(name) == nullptr) << "'" << name << "'";
  }
}

// Keeps what reaches `write`, and keeps levels at or above `minimum`.
class FilteringLogger final : public Logger {
public:
  explicit FilteringLogger(LogLevel minimum) : minimum(minimum) {}

  void write(LogLevel level, kj::StringPtr event, kj::ArrayPtr<const LogField> fields) override {
    std::string line = std::string(logLevelName(level).cStr()) + " " + event.cStr();
    for (auto& field : fields)
      line += std::string(" ") + field.key.cStr() + "=" + field.value.cStr();
    lines.push_back(line);
  }
  bool enabled(LogLevel level) const override { return level >= minimum; }

  LogLevel minimum;
  std::vector<std::string> lines;
};

TEST(Logger, HelpersWriteAtTheirLevelWithTheirFields) {
  FilteringLogger logger(LogLevel::DEBUG);
  logger.debug("d", {{"k", "1"}});
  logger.info("i");
  logger.warning("w", {{"a", "x"}, {"b", "y"}});
  logger.error("e", {{"code", "42"}});
  EXPECT_EQ(logger.lines, (std::vector<std::string>{"debug d k=1", "info i", "warning w a=x b=y",
                                                    "error e code=42"}));
}

TEST(Logger, HelpersSkipLevelsTheLoggerDoesNotKeep) {
  FilteringLogger logger(LogLevel::WARNING);
  logger.debug("d");
  logger.info("i");
  logger.warning("w");
  logger.error("e");
  EXPECT_EQ(logger.lines, (std::vector<std::string>{"warning w", "error e"}));
}

}  // namespace
}  // namespace payhost
