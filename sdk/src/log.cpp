#include <payhost/log.h>

namespace payhost {

kj::StringPtr logLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::DEBUG:
      return "debug";
    case LogLevel::INFO:
      return "info";
    case LogLevel::WARNING:
      return "warning";
    case LogLevel::ERROR:
      return "error";
  }
  return "unknown";
}

kj::Maybe<LogLevel> tryParseLogLevel(kj::StringPtr name) {
  for (auto level : {LogLevel::DEBUG, LogLevel::INFO, LogLevel::WARNING, LogLevel::ERROR}) {
    if (name == logLevelName(level)) return level;
  }
  return nullptr;
}

void Logger::debug(kj::StringPtr event, std::initializer_list<LogField> fields) {
  if (enabled(LogLevel::DEBUG))
    write(LogLevel::DEBUG, event, kj::arrayPtr(fields.begin(), fields.size()));
}
void Logger::info(kj::StringPtr event, std::initializer_list<LogField> fields) {
  if (enabled(LogLevel::INFO))
    write(LogLevel::INFO, event, kj::arrayPtr(fields.begin(), fields.size()));
}
void Logger::warning(kj::StringPtr event, std::initializer_list<LogField> fields) {
  if (enabled(LogLevel::WARNING)) {
    write(LogLevel::WARNING, event, kj::arrayPtr(fields.begin(), fields.size()));
  }
}
void Logger::error(kj::StringPtr event, std::initializer_list<LogField> fields) {
  if (enabled(LogLevel::ERROR))
    write(LogLevel::ERROR, event, kj::arrayPtr(fields.begin(), fields.size()));
}

}  // namespace payhost
