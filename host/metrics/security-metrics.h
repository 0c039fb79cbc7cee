// The security figures on /metrics: calls refused by `[[access]]`, connections refused or closed
// by the `[limits]`, failed TLS handshakes. Plain numbers in, Prometheus text out, so this file
// knows nothing of the rooms that count them.
//
// Thread-safe (no state).

#pragma once

#include <kj/string.h>

#include <cstdint>

namespace payhost::host {

struct SecurityMetricsInput {
  uint64_t accessDenied = 0;
  uint64_t connectionsOverLimit = 0;
  uint64_t handshakesFailed = 0;
  uint64_t handshakesTimedOut = 0;
  uint64_t connectionsIdleClosed = 0;
  uint64_t callsOverLimit = 0;
};

// `payhost_access_denied_total`, `payhost_tls_handshake_failures_total{reason}`,
// `payhost_connections_refused_total{reason}`, `payhost_calls_refused_total{reason}`.
kj::String renderSecurityMetrics(const SecurityMetricsInput& input);

}  // namespace payhost::host
