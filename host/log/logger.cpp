#include "host/log/logger.h"

#include "host/config/daemon-config.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <ctime>
#include <memory>
#include <string>

namespace payhost::host {

namespace {

bool needsQuotes(kj::StringPtr value) {
  if (value.size() == 0) return true;
  for (char c : value) {
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f) return true;
  }
  return false;
}

// Escapes for both a logfmt quoted value and a JSON string: the two agree on \" \\ \n \t and \u.
void appendEscaped(std::string& out, kj::StringPtr value) {
  static constexpr char HEX[] = "0123456789abcdef";
  for (char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          out += "\\u00";
          out += HEX[(c >> 4) & 0xf];
          out += HEX[c & 0xf];
        } else {
          out += c;
        }
    }
  }
}

// Keys come from plugins too: a key with a space, '=' or a newline could forge other fields or
// records, so anything but [A-Za-z0-9_.-] becomes '_' (an empty key becomes "_").
void appendLogfmtKey(std::string& out, kj::StringPtr key) {
  if (key.size() == 0) out += '_';
  for (char c : key) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '.' || c == '-';
    out += plain ? c : '_';
  }
}

void appendLogfmt(std::string& out, kj::StringPtr key, kj::StringPtr value) {
  out += ' ';
  appendLogfmtKey(out, key);
  out += '=';
  if (needsQuotes(value)) {
    out += '"';
    appendEscaped(out, value);
    out += '"';
  } else {
    out.append(value.begin(), value.size());
  }
}

void appendJson(std::string& out, kj::StringPtr key, kj::StringPtr value) {
  out += ",\"";
  appendEscaped(out, key);
  out += "\":\"";
  appendEscaped(out, value);
  out += '"';
}

kj::String utcTimestamp() {
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  tm parts;
  gmtime_r(&now.tv_sec, &parts);
  char text[40];
  size_t n = strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &parts);
  snprintf(text + n, sizeof(text) - n, ".%03ldZ", now.tv_nsec / 1000000);
  return kj::heapString(text);
}

std::shared_ptr<spdlog::logger> makeLogger(spdlog::sink_ptr sink) {
  auto logger = std::make_shared<spdlog::logger>("payhost", kj::mv(sink));
  logger->set_pattern("%v");
  logger->set_level(spdlog::level::trace);
  logger->flush_on(spdlog::level::trace);
  return logger;
}

}  // namespace

kj::String renderLogRecord(LogFormat format, kj::StringPtr timestamp, LogLevel level,
                           kj::StringPtr event, kj::ArrayPtr<const LogField> fixed,
                           kj::ArrayPtr<const LogField> fields) {
  std::string out;
  out.reserve(128);
  if (format == LogFormat::JSON) {
    out += "{\"ts\":\"";
    appendEscaped(out, timestamp);
    out += '"';
    appendJson(out, "level", logLevelName(level));
    appendJson(out, "event", event);
    for (auto& field : fixed)
      appendJson(out, field.key, field.value);
    for (auto& field : fields)
      appendJson(out, field.key, field.value);
    out += '}';
  } else {
    out += "ts=";
    out.append(timestamp.begin(), timestamp.size());
    appendLogfmt(out, "level", logLevelName(level));
    appendLogfmt(out, "event", event);
    for (auto& field : fixed)
      appendLogfmt(out, field.key, field.value);
    for (auto& field : fields)
      appendLogfmt(out, field.key, field.value);
  }
  return kj::heapString(out.data(), out.size());
}

LogSink::LogSink(LogLevel minimum, LogFormat format)
    : minimum(minimum),
      format(format),
      out(makeLogger(std::make_shared<spdlog::sinks::stderr_sink_mt>())) {}

LogSink::LogSink(LogLevel minimum, LogFormat format, kj::StringPtr path)
    : minimum(minimum),
      format(format),
      out(makeLogger(std::make_shared<spdlog::sinks::basic_file_sink_mt>(path.cStr()))) {}

LogSink::~LogSink() noexcept {
  out->flush();
}

void LogSink::write(LogLevel level, kj::StringPtr event, kj::ArrayPtr<const LogField> fixed,
                    kj::ArrayPtr<const LogField> fields) {
  if (!enabled(level)) return;
  auto line = renderLogRecord(format, utcTimestamp(), level, event, fixed, fields);
  out->info(std::string_view(line.begin(), line.size()));
}

void LogSink::flush() {
  out->flush();
}

ScopedLogger::ScopedLogger(LogSink& sink, std::initializer_list<LogField> fields) : sink(sink) {
  for (auto& field : fields) {
    storage.add(kj::heapString(field.key));
    storage.add(kj::heapString(field.value));
  }
  for (size_t i = 0; i < storage.size(); i += 2) {
    fixed.add(LogField{storage[i], storage[i + 1]});
  }
}

void ScopedLogger::write(LogLevel level, kj::StringPtr event, kj::ArrayPtr<const LogField> fields) {
  sink.write(level, event, fixed.asPtr(), fields);
}

}  // namespace payhost::host
