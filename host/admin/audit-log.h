// The audit log: one JSON line per event (plugin load, unload, deploy, swap, promotion, rollback,
// refusal, admin action, authentication or permission failure, config or key reload), appended
// and flushed to disk (fdatasync) before the action it records is reported, read back on start
// so history survives restarts. Each entry carries the hash of the one before it, so an edited,
// removed or reordered entry breaks the chain.
//
// The chain alone cannot show that entries were cut from the end: the shortened log is still a
// valid chain. So after each append the log's head (last sequence and hash) is also written to
// `<log>.head` (replaced atomically, fsynced); `verify()` refuses a log that does not reach the
// head it recorded. Limit: someone who can write both files can rewrite both consistently (or
// delete both); only copying entries off the machine as they are written (e.g. shipping the
// log to a collector) protects against that. The head file proves the log was not truncated
// without its help, nothing more.
//
// Thread-safe: `append` and `record` may be called from any thread (they block the caller for
// one write and one fdatasync, so a shard should not call them per request). The readers
// (`size`, `operator[]`) belong to the control thread.

#pragma once

#include <payhost/host.capnp.h>

#include <capnp/message.h>
#include <kj/io.h>
#include <kj/mutex.h>
#include <kj/string.h>
#include <kj/vector.h>

namespace payhost::host {

// One event. Borrowed for the duration of `append()`.
struct AuditRecord {
  // What happened: see `AuditEntry.action` in host.capnp.
  kj::StringPtr action;
  kj::StringPtr plugin;
  kj::StringPtr fromVersion;
  kj::StringPtr toVersion;
  kj::StringPtr package;
  kj::StringPtr detail;
  // Who: empty means payhostd itself ("payhostd"); an admin peer is "uid=U pid=P", a client is
  // its identity (e.g. "tls:CN=acquirer-1").
  kj::StringPtr actor = nullptr;
  // "ok", "refused" or "failed"; empty means "ok".
  kj::StringPtr outcome = nullptr;
};

class AuditLog {
public:
  // Opens (creating it and its directory if needed) the log at `path` and reads its entries.
  // Throws naming the file and line when an entry cannot be read or the hash chain is broken.
  explicit AuditLog(kj::StringPtr path);
  KJ_DISALLOW_COPY(AuditLog);

  // Appends one entry and fsyncs it, then the head file. Throws if it cannot be written.
  void append(const AuditRecord& record);

  // The stable entry point for security events from any room (authentication and permission
  // failures, config and key reloads): one entry with no plugin. E.g.
  //   audit.record("permission-denied", "tls:CN=shop-7", "refused",
  //                "payments.card.refund: not granted");
  void record(kj::StringPtr action, kj::StringPtr actor, kj::StringPtr outcome,
              kj::StringPtr detail);

  size_t size() const { return state.lockShared()->entries.size(); }
  // Entry `i` (0 is the oldest); valid while the log lives.
  schema::AuditEntry::Reader operator[](size_t i) const;

  kj::StringPtr path() const { return path_; }

  // Null when every entry's hash matches its content and its predecessor and the log reaches
  // the head recorded in `<path>.head` (when there is one); otherwise what is wrong, naming the
  // first bad entry by line and sequence ("audit.log:3: sequence 4, expected 3 (...)").
  static kj::Maybe<kj::String> verify(kj::StringPtr path);

  // The path of the head file of the log at `path`.
  static kj::String headPath(kj::StringPtr path);

  // Entries in the log at `path` (0 when there is none); meaningful only after `verify`.
  static uint64_t countEntries(kj::StringPtr path);

private:
  void writeHead(uint64_t sequence, kj::StringPtr hash);

  struct State {
    kj::String lastHash;
    // Never removed or changed once added, so a reader handed out stays valid.
    kj::Vector<kj::Own<capnp::MallocMessageBuilder>> entries;
  };

  kj::String path_;
  kj::AutoCloseFd fd;
  // Appends from several threads are serialised: the chain has one order.
  kj::MutexGuarded<State> state;
};

}  // namespace payhost::host
