// Security events that arrive at a rate a client controls (failed TLS handshakes, calls refused
// by `[[access]]`) reach the audit log through this throttle, so a flood of bad handshakes cannot
// become a flood of disk writes: every audit record costs a write and an fdatasync (two, with the
// head file), and it blocks the thread that records it (a shard, for these events).
//
// The choice: rate-limit, not batch. Per key (action, actor, reason) at most one record per
// window (default 60 s); further events of that key are counted, and the key's next record says
// how many were suppressed since its previous one. Across all keys at most `maxRecordsPerWindow`
// records (default 32) per window, so varying the actor (many source addresses) does not lift the
// bound either; events over it are counted under their key the same way. At most `maxKeys` keys
// are tracked; beyond, events share the key (action, "*", reason). `flush()` (at shutdown) writes
// one summary record per key whose suppressed events have not been reported yet (beyond
// `maxRecordsPerWindow` such keys, one per action), so every event is accounted for in the log:
// as a record or in a count. Worst case: (32 + keys) records per
// minute, whatever the attacker sends. Batching would keep every event but make the log's size
// (not only its syncs) proportional to the attack.
//
// Thread-safe: `record` is called from shard threads, `flush` from the control thread. The
// decision is made under a lock; the write itself happens outside it (AuditLog serialises).

#pragma once

#include "host/admin/audit-log.h"

#include <kj/mutex.h>
#include <kj/string.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

namespace payhost::host {

class SecurityAudit {
public:
  using Clock = std::chrono::steady_clock;

  struct Options {
    Clock::duration window = std::chrono::seconds(60);
    uint32_t maxRecordsPerWindow = 32;
    uint32_t maxKeys = 1024;
  };

  explicit SecurityAudit(AuditLog& log) : SecurityAudit(log, Options()) {}
  SecurityAudit(AuditLog& log, Options options) : log(log), options(options) {}
  KJ_DISALLOW_COPY(SecurityAudit);

  // Records `action` by `actor` with `outcome`, unless the throttle suppresses it. `reason` is a
  // short, bounded classification (e.g. "no-certificate") and part of the key; `detail` is free
  // text kept only in the record. Returns whether a record was written. Throws only if the audit
  // log cannot be written.
  bool record(kj::StringPtr action, kj::StringPtr actor, kj::StringPtr outcome,
              kj::StringPtr reason, kj::StringPtr detail) {
    return recordAt(Clock::now(), action, actor, outcome, reason, detail);
  }
  // The same at a given time (for tests).
  bool recordAt(Clock::time_point now, kj::StringPtr action, kj::StringPtr actor,
                kj::StringPtr outcome, kj::StringPtr reason, kj::StringPtr detail);

  // Writes one record per key with suppressed, unreported events ("N more like it suppressed";
  // beyond `maxRecordsPerWindow` keys, one record per action for the rest) and forgets them.
  // Returns how many records it wrote.
  size_t flush();

  // Events suppressed so far (reported in a later record or not).
  uint64_t suppressedTotal() const { return state.lockShared()->suppressedTotal; }

private:
  struct Key {
    std::string action;
    std::string actor;
    std::string outcome;
    std::string reason;
    bool operator<(const Key& other) const;
  };
  struct Entry {
    bool recorded = false;
    Clock::time_point last;
    uint64_t suppressed = 0;
  };
  struct State {
    std::map<Key, Entry> entries;
    Clock::time_point windowStart;
    uint32_t recordsInWindow = 0;
    uint64_t suppressedTotal = 0;
  };

  AuditLog& log;
  Options options;
  kj::MutexGuarded<State> state;
};

}  // namespace payhost::host
