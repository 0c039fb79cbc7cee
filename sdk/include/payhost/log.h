// Structured logging for plugins.
//
// A log record is an event name plus key=value fields; the host renders it as one line and adds
// the plugin, version and shard. Never pass a card number, CVV, key or token as a field: log a
// vault token or the last four digits.
//
// Thread-safety: a `Logger` handed to a plugin may be called from the plugin's shard and from
// offloaded work. The fields are copied before `write` returns.

#ifndef PAYHOST_LOG_H_
#define PAYHOST_LOG_H_

#include <kj/array.h>
#include <kj/string.h>

#include <initializer_list>

namespace payhost {

enum class LogLevel { DEBUG, INFO, WARNING, ERROR };

// One key=value pair. Both views must outlive the `write` call only.
struct LogField {
  kj::StringPtr key;
  kj::StringPtr value;
};

// Returns "debug", "info", "warning" or "error".
kj::StringPtr logLevelName(LogLevel level);

// Parses a level name as written in configs; null when unknown.
kj::Maybe<LogLevel> tryParseLogLevel(kj::StringPtr name);

class Logger {
public:
  virtual ~Logger() noexcept(false) = default;

  // Records one event. Returns after the record has been copied.
  virtual void write(LogLevel level, kj::StringPtr event, kj::ArrayPtr<const LogField> fields) = 0;

  // Whether records at `level` are kept; lets a caller skip building expensive fields.
  virtual bool enabled(LogLevel level) const = 0;

  void debug(kj::StringPtr event, std::initializer_list<LogField> fields = {});
  void info(kj::StringPtr event, std::initializer_list<LogField> fields = {});
  void warning(kj::StringPtr event, std::initializer_list<LogField> fields = {});
  void error(kj::StringPtr event, std::initializer_list<LogField> fields = {});
};

}  // namespace payhost

#endif  // PAYHOST_LOG_H_
