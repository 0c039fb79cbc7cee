#include "host/metrics/outbound-metrics.h"

#include "host/metrics/exposition.h"

namespace payhost::host {

kj::String renderOutboundMetrics(const Outbound& outbound) {
  using Type = Exposition::Type;
  Exposition out;
  out.family("payhost_remote_connections_open", Type::GAUGE,
             "Connections open to the remote host, over all shards.");
  out.family("payhost_remote_connects_total", Type::COUNTER,
             "Connections established to the remote host (reconnects included).");
  out.family("payhost_remote_reconnects_total", Type::COUNTER,
             "Connections established after one was lost or a connect failed.");
  out.family("payhost_remote_connect_failures_total", Type::COUNTER,
             "Connects that failed or timed out (connect_timeout_ms).");
  out.family("payhost_remote_connections_lost_total", Type::COUNTER,
             "Connections that were up and went away.");
  out.family("payhost_remote_calls_total", Type::COUNTER,
             "Calls from plugins to services on the remote host.");
  out.family("payhost_remote_calls_in_flight", Type::GAUGE,
             "Calls to the remote host that have not completed.");
  out.family("payhost_remote_call_failures_total", Type::COUNTER,
             "Failed calls to the remote host, by kind: disconnected, overloaded, timeout, "
             "failed.");
  auto relaxed = std::memory_order_relaxed;
  for (auto& remote : outbound.remotes()) {
    auto& s = remote->stats;
    kj::StringPtr name = remote->config.name;
    out.sample("payhost_remote_connections_open", {{"remote", name}},
               static_cast<double>(s.connectionsOpen.load(relaxed)));
    out.sample("payhost_remote_connects_total", {{"remote", name}},
               static_cast<double>(s.connects.load(relaxed)));
    out.sample("payhost_remote_reconnects_total", {{"remote", name}},
               static_cast<double>(s.reconnects.load(relaxed)));
    out.sample("payhost_remote_connect_failures_total", {{"remote", name}},
               static_cast<double>(s.connectFailures.load(relaxed)));
    out.sample("payhost_remote_connections_lost_total", {{"remote", name}},
               static_cast<double>(s.connectionsLost.load(relaxed)));
    out.sample("payhost_remote_calls_total", {{"remote", name}},
               static_cast<double>(s.calls.load(relaxed)));
    out.sample("payhost_remote_calls_in_flight", {{"remote", name}},
               static_cast<double>(s.callsInFlight.load(relaxed)));
    auto failures = s.failures.load(relaxed);
    auto disconnected = s.failedDisconnected.load(relaxed);
    auto overloaded = s.failedOverloaded.load(relaxed);
    auto timeout = s.failedTimeout.load(relaxed);
    // Read one by one, so the remainder is clamped rather than allowed to wrap.
    auto other = failures > disconnected + overloaded + timeout
                     ? failures - disconnected - overloaded - timeout
                     : 0;
    out.sample("payhost_remote_call_failures_total", {{"remote", name}, {"kind", "disconnected"}},
               static_cast<double>(disconnected));
    out.sample("payhost_remote_call_failures_total", {{"remote", name}, {"kind", "overloaded"}},
               static_cast<double>(overloaded));
    out.sample("payhost_remote_call_failures_total", {{"remote", name}, {"kind", "timeout"}},
               static_cast<double>(timeout));
    out.sample("payhost_remote_call_failures_total", {{"remote", name}, {"kind", "failed"}},
               static_cast<double>(other));
  }
  return out.finish();
}

}  // namespace payhost::host
