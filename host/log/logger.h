// The host's structured log: one line per event on stderr, as logfmt or JSON.
//
//   ts=2026-11-27T09:41:02.113Z level=info event=plugin.loaded plugin=card-processor version=1.0.0
//
// `LogSink` renders and writes records; `ScopedLogger` is the `payhost::Logger` handed to one
// plugin instance (or host component), adding its fixed fields (plugin, version, shard) to each
// record. Values that need quoting are quoted; no field is ever dropped or truncated.
//
// Thread-safety: `LogSink` is thread-safe (one write per record, under spdlog's lock);
// a `ScopedLogger` is immutable after construction and may be used from any thread.

#pragma once

#include <payhost/log.h>

#include <kj/memory.h>
#include <kj/string.h>
#include <kj/vector.h>

#include <atomic>
#include <memory>

namespace spdlog {
class logger;
}

namespace payhost::host {

enum class LogFormat;

class LogSink {
public:
  // Writes to stderr.
  LogSink(LogLevel minimum, LogFormat format);
  // Writes to the file at `path` (appending), for tests that read the log back.
  LogSink(LogLevel minimum, LogFormat format, kj::StringPtr path);
  ~LogSink() noexcept;
  KJ_DISALLOW_COPY(LogSink);

  void write(LogLevel level, kj::StringPtr event, kj::ArrayPtr<const LogField> fixed,
             kj::ArrayPtr<const LogField> fields);
  bool enabled(LogLevel level) const { return level >= minimum.load(std::memory_order_relaxed); }
  void setMinimum(LogLevel level) { minimum.store(level, std::memory_order_relaxed); }
  void flush();

private:
  std::atomic<LogLevel> minimum;
  LogFormat format;
  std::shared_ptr<spdlog::logger> out;  // spdlog hands out shared_ptr.
};

// A `payhost::Logger` that adds fixed fields to every record.
class ScopedLogger final : public Logger {
public:
  // `sink` must outlive this logger. Field values are copied.
  ScopedLogger(LogSink& sink, std::initializer_list<LogField> fixed);

  void write(LogLevel level, kj::StringPtr event, kj::ArrayPtr<const LogField> fields) override;
  bool enabled(LogLevel level) const override { return sink.enabled(level); }

private:
  LogSink& sink;
  kj::Vector<kj::String> storage;
  kj::Vector<LogField> fixed;
};

// Renders one record (without the trailing newline). Exposed for tests.
kj::String renderLogRecord(LogFormat format, kj::StringPtr timestamp, LogLevel level,
                           kj::StringPtr event, kj::ArrayPtr<const LogField> fixed,
                           kj::ArrayPtr<const LogField> fields);

}  // namespace payhost::host
