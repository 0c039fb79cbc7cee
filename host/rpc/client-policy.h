// What every client connection is served under: the `[[access]]` rules (which identity may call
// which methods of which services), the `[limits]`, and the counters of what was refused.
//
// `AccessPolicy` and `ClientPolicy` are immutable after construction and shared by every shard;
// `SecurityCounters` are relaxed atomics bumped by the shards and read by /metrics. All three are
// owned by `Daemon` and outlive the shards.

#pragma once

#include "host/admin/security-audit.h"
#include "host/config/daemon-config.h"
#include "host/log/logger.h"

#include <kj/string.h>

#include <atomic>
#include <cstdint>

namespace payhost::host {

struct SecurityCounters {
  // Calls and service lookups refused by `[[access]]`.
  std::atomic<uint64_t> accessDenied{0};
  // Connections closed at accept because `limits.max_connections` were open.
  std::atomic<uint64_t> connectionsOverLimit{0};
  // TLS handshakes that failed (no or untrusted certificate, expired, old protocol, not TLS...).
  std::atomic<uint64_t> handshakesFailed{0};
  // Handshakes not done within `limits.handshake_timeout_ms`.
  std::atomic<uint64_t> handshakesTimedOut{0};
  // Connections closed after `limits.idle_timeout_ms` without a call.
  std::atomic<uint64_t> connectionsIdleClosed{0};
  // Calls refused because their connection had `limits.max_calls_per_connection` in flight.
  std::atomic<uint64_t> callsOverLimit{0};
  // Client connections open now, those still in their handshake included (for the limit).
  std::atomic<uint32_t> connectionsOpen{0};
};

class AccessPolicy {
public:
  // `rules` outlive the policy (they belong to the config).
  explicit AccessPolicy(kj::ArrayPtr<const AccessRule> rules) : rules(rules) {}

  // Whether some rule lets `identity` call at least one method of `service`.
  bool mayUseService(kj::StringPtr identity, kj::StringPtr service) const;
  // Whether some rule lets `identity` call `method` (a name, or an ordinal for interfaces the
  // host does not know) of `service`.
  bool mayCall(kj::StringPtr identity, kj::StringPtr service, kj::StringPtr method) const;

private:
  kj::ArrayPtr<const AccessRule> rules;
};

struct ClientPolicy {
  const AccessPolicy& access;
  const LimitsConfig& limits;
  SecurityCounters& counters;
  LogSink& log;
  // Where failed handshakes (`auth-failed`) and refusals (`permission-denied`) are recorded,
  // throttled; null: not recorded (unit tests). Set before the shards start.
  SecurityAudit* audit = nullptr;
};

// Records a security event from a shard through `policy.audit` (if any). An audit log that cannot
// be written is logged (`audit.write_failed`), not thrown into the connection that caused it.
void auditSecurityEvent(const ClientPolicy& policy, kj::StringPtr action, kj::StringPtr actor,
                        kj::StringPtr reason, kj::StringPtr detail);

}  // namespace payhost::host
