// The audit log: one JSON line per deploy, promotion, rollback, refusal and load, appended and
// flushed to disk (fsync) before the action it records is reported, read back on start so history
// survives restarts. Each entry carries the hash of the one before it.
//
// Control thread only.

#pragma once

#include <payhost/host.capnp.h>

#include <capnp/message.h>
#include <kj/io.h>
#include <kj/string.h>
#include <kj/vector.h>

namespace payhost::host {

struct AuditRecord {
  kj::StringPtr action;
  kj::StringPtr plugin;
  kj::StringPtr fromVersion;
  kj::StringPtr toVersion;
  kj::StringPtr package;
  kj::StringPtr detail;
};

class AuditLog {
public:
  // Opens (creating it and its directory if needed) the log at `path` and reads its entries.
  // Throws naming the file and line when an entry cannot be read or the hash chain is broken.
  explicit AuditLog(kj::StringPtr path);
  KJ_DISALLOW_COPY(AuditLog);

  // Appends one entry and fsyncs it. Throws if it cannot be written.
  void append(const AuditRecord& record);

  size_t size() const { return entries.size(); }
  // Entry `i` (0 is the oldest).
  schema::AuditEntry::Reader operator[](size_t i) const;

  kj::StringPtr path() const { return path_; }

  // Null when every entry's hash matches its content and its predecessor; otherwise what is
  // wrong, naming the entry's line.
  static kj::Maybe<kj::String> verify(kj::StringPtr path);

private:
  kj::String path_;
  kj::AutoCloseFd fd;
  kj::Vector<kj::Own<capnp::MallocMessageBuilder>> entries;
  kj::String lastHash;
};

}  // namespace payhost::host
