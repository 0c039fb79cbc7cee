#include "host/metrics/security-metrics.h"

#include "host/metrics/exposition.h"

namespace payhost::host {

kj::String renderSecurityMetrics(const SecurityMetricsInput& input) {
  using Type = Exposition::Type;
  Exposition out;
  out.family("payhost_access_denied_total", Type::COUNTER,
             "Service lookups and calls refused by the [[access]] rules.");
  out.sample("payhost_access_denied_total", {}, static_cast<double>(input.accessDenied));
  out.family("payhost_tls_handshake_failures_total", Type::COUNTER,
             "TLS handshakes that failed (refused certificate or protocol) or timed out.");
  out.sample("payhost_tls_handshake_failures_total", {{"reason", "failed"}},
             static_cast<double>(input.handshakesFailed));
  out.sample("payhost_tls_handshake_failures_total", {{"reason", "timeout"}},
             static_cast<double>(input.handshakesTimedOut));
  out.family("payhost_connections_refused_total", Type::COUNTER,
             "Client connections closed by a limit.");
  out.sample("payhost_connections_refused_total", {{"reason", "max_connections"}},
             static_cast<double>(input.connectionsOverLimit));
  out.sample("payhost_connections_refused_total", {{"reason", "idle"}},
             static_cast<double>(input.connectionsIdleClosed));
  out.family("payhost_calls_refused_total", Type::COUNTER,
             "Calls refused because their connection had max_calls_per_connection in flight.");
  out.sample("payhost_calls_refused_total", {{"reason", "max_calls_per_connection"}},
             static_cast<double>(input.callsOverLimit));
  return out.finish();
}

}  // namespace payhost::host
