#include "host/metrics/host-metrics.h"

#include "host/metrics/exposition.h"

#include <payhost/flow.capnp.h>
#include <payhost/payments.capnp.h>

#include <capnp/schema.h>

#include <array>
#include <map>
#include <string>

namespace payhost::host {

namespace {

using Type = Exposition::Type;

kj::Maybe<capnp::InterfaceSchema> knownInterface(uint64_t interfaceId) {
  capnp::Schema known[] = {
      capnp::Schema::from<schema::CardProcessor>(),
      capnp::Schema::from<schema::FraudScreen>(),
      capnp::Schema::from<schema::Fx>(),
      capnp::Schema::from<schema::Ledger>(),
      capnp::Schema::from<schema::Payments>(),
  };
  for (auto& schema : known) {
    if (schema.getProto().getId() == interfaceId) return schema.asInterface();
  }
  return nullptr;
}

void declareFamilies(Exposition& out) {
  out.family("payhost_calls_total", Type::COUNTER,
             "Calls routed to a plugin, by plugin version, service and method (admission "
             "refusals included).");
  out.family("payhost_call_errors_total", Type::COUNTER,
             "Calls that failed, by kind: failed, overloaded, disconnected, unimplemented.");
  out.family("payhost_call_duration_seconds", Type::HISTOGRAM,
             "Time from routing a call to its answer, including any admission wait.");
  out.family("payhost_plugin_loaded", Type::GAUGE,
             "1 for each plugin version loaded and serving, labelled with its generation.");
  out.family("payhost_plugin_draining", Type::GAUGE,
             "1 while the plugin version drains (host shutdown or replaced by a deploy).");
  out.family("payhost_plugin_calls_in_flight", Type::GAUGE,
             "Calls routed to the plugin version that have not completed.");
  out.family("payhost_admission_queued", Type::GAUGE,
             "Calls waiting for an admission turn ([plugin.admission] max_concurrent).");
  out.family("payhost_admission_rejected_total", Type::COUNTER,
             "Calls failed OVERLOADED because the admission queue was full.");
  out.family("payhost_plugins", Type::GAUGE, "Configured plugins by state.");
  out.family("payhost_plugin_versions", Type::GAUGE,
             "Versions of each plugin loaded, by state: active (serving new calls), draining "
             "(replaced, calls in flight finishing; or the host is shutting down), parked (kept "
             "loaded at unload because its objects or offloaded work lived on).");
  out.family("payhost_workers_threads", Type::GAUGE, "Worker pool threads.");
  out.family("payhost_workers_busy", Type::GAUGE, "Worker pool threads running work.");
  out.family("payhost_workers_waiting", Type::GAUGE, "Offloaded work waiting for a lease.");
  out.family("payhost_workers_completed_total", Type::COUNTER, "Offloaded work completed.");
  out.family("payhost_workers_timeouts_total", Type::COUNTER,
             "Offloaded work refused after waiting for a lease.");
  out.family("payhost_workers_grown_total", Type::COUNTER, "Worker pool threads added.");
  out.family("payhost_workers_shrunk_total", Type::COUNTER, "Worker pool threads removed.");
  out.family("payhost_db_connections", Type::GAUGE, "Database pool connections open.");
  out.family("payhost_db_in_use", Type::GAUGE, "Database pool connections in a transaction.");
  out.family("payhost_db_waiting", Type::GAUGE, "Transactions waiting for a connection lease.");
  out.family("payhost_db_transactions_total", Type::COUNTER, "Database transactions run.");
  out.family("payhost_db_timeouts_total", Type::COUNTER,
             "Transactions refused OVERLOADED after waiting for a lease.");
  out.family("payhost_db_discarded_total", Type::COUNTER,
             "Connections discarded because they broke.");
  out.family("payhost_db_wait_seconds_total", Type::COUNTER,
             "Time transactions spent waiting for a connection lease.");
  out.family("payhost_db_size", Type::GAUGE,
             "Database pool size now: connections it may lend beyond reservations (scale = true: "
             "between min_connections and max_connections).");
  out.family("payhost_db_scaling_total", Type::COUNTER,
             "Database pool scaling decisions, by decision: grow, shrink.");
  out.family("payhost_leases_leaked_total", Type::COUNTER,
             "Leases a plugin version still held when it was unloaded, by pool and outcome: "
             "reclaimed (taken back by the host) or held (plugin code still running held them).");
  out.family("payhost_calls_in_flight", Type::GAUGE, "Calls in flight on every shard.");
  out.family("payhost_host_calls_total", Type::COUNTER, "Calls routed, host-wide.");
  out.family("payhost_host_calls_failed_total", Type::COUNTER, "Calls failed, host-wide.");
  out.family("payhost_connections_open", Type::GAUGE, "Gateway connections open.");
  out.family("payhost_shards", Type::GAUGE, "Event-loop shards.");
  out.family("payhost_draining", Type::GAUGE, "1 once the host has started to shut down.");
}

void renderGeneration(Exposition& out, const Generation& g, bool draining) {
  auto generation = kj::str(g.id());
  out.sample("payhost_plugin_loaded",
             {{"plugin", g.name()}, {"version", g.version()}, {"generation", generation}}, 1);
  out.sample("payhost_plugin_draining",
             {{"plugin", g.name()}, {"version", g.version()}, {"generation", generation}},
             draining ? 1 : 0);
  out.sample("payhost_plugin_calls_in_flight",
             {{"plugin", g.name()}, {"version", g.version()}, {"generation", generation}},
             g.callsInFlight.load(std::memory_order_relaxed));
  out.sample("payhost_admission_queued",
             {{"plugin", g.name()}, {"version", g.version()}, {"generation", generation}},
             g.admissionQueued.load(std::memory_order_relaxed));
  out.sample("payhost_admission_rejected_total",
             {{"plugin", g.name()}, {"version", g.version()}, {"generation", generation}},
             static_cast<double>(g.admissionRejected.load(std::memory_order_relaxed)));

  double bounds[MethodCounters::BUCKETS - 1];
  for (size_t i = 0; i < MethodCounters::BUCKETS - 1; ++i) {
    bounds[i] = static_cast<double>(MethodCounters::BUCKET_MICROS[i]) / 1e6;
  }
  auto services = g.services();
  for (size_t s = 0; s < services.size(); ++s) {
    for (uint16_t m = 0; m < Generation::MAX_METHODS; ++m) {
      auto& counters = g.methodCounters(s, m);
      auto calls = counters.calls.load(std::memory_order_relaxed);
      if (calls == 0) continue;
      auto method = m == Generation::MAX_METHODS - 1 ? kj::str(m, "+")
                                                     : methodLabel(services[s].interfaceId, m);
      auto service = services[s].name.asPtr();
      out.sample("payhost_calls_total",
                 {{"plugin", g.name()},
                  {"version", g.version()},
                  {"generation", generation},
                  {"service", service},
                  {"method", method}},
                 static_cast<double>(calls));
      std::pair<kj::StringPtr, const std::atomic<uint64_t>*> kinds[] = {
          {"failed", &counters.failed},
          {"overloaded", &counters.overloaded},
          {"disconnected", &counters.disconnected},
          {"unimplemented", &counters.unimplemented},
      };
      for (auto& [kind, count] : kinds) {
        out.sample("payhost_call_errors_total",
                   {{"plugin", g.name()},
                    {"version", g.version()},
                    {"generation", generation},
                    {"service", service},
                    {"method", method},
                    {"kind", kind}},
                   static_cast<double>(count->load(std::memory_order_relaxed)));
      }
      uint64_t buckets[MethodCounters::BUCKETS];
      for (size_t i = 0; i < MethodCounters::BUCKETS; ++i) {
        buckets[i] = counters.buckets[i].load(std::memory_order_relaxed);
      }
      out.histogram(
          "payhost_call_duration_seconds",
          {{"plugin", g.name()},
           {"version", g.version()},
           {"generation", generation},
           {"service", service},
           {"method", method}},
          bounds, buckets,
          static_cast<double>(counters.latencyMicrosSum.load(std::memory_order_relaxed)) / 1e6);
    }
  }
}

}  // namespace

kj::String methodLabel(uint64_t interfaceId, uint16_t methodId) {
  KJ_IF_MAYBE (interface, knownInterface(interfaceId)) {
    auto methods = interface->getMethods();
    if (methodId < methods.size()) return kj::heapString(methods[methodId].getProto().getName());
  }
  return kj::str(methodId);
}

kj::String renderHostMetrics(const HostMetricsInput& input) {
  Exposition out;
  declareFamilies(out);
  for (auto& record : input.registry.plugins()) {
    KJ_IF_MAYBE (generation, record.generation) {
      renderGeneration(out, **generation,
                       input.draining || record.state == schema::PluginState::DRAINING);
    }
  }
  {
    // Per plugin name: [active, draining, parked].
    std::map<std::string, std::array<uint32_t, 3>> versions;
    for (auto& record : input.registry.plugins()) {
      KJ_IF_MAYBE (generation, record.generation) {
        bool draining = input.draining || record.state == schema::PluginState::DRAINING;
        ++versions[(*generation)->name().cStr()][draining ? 1 : 0];
      }
    }
    for (auto& retired : input.registry.retiredVersions()) {
      ++versions[retired.plugin.cStr()][retired.parked ? 2 : 1];
    }
    for (auto& [plugin, counts] : versions) {
      kj::StringPtr states[] = {"active", "draining", "parked"};
      for (size_t i = 0; i < 3; ++i) {
        out.sample("payhost_plugin_versions", {{"plugin", plugin.c_str()}, {"state", states[i]}},
                   counts[i]);
      }
    }
  }
  out.sample("payhost_plugins", {{"state", "serving"}},
             input.registry.count(schema::PluginState::SERVING));
  out.sample("payhost_plugins", {{"state", "failed"}},
             input.registry.count(schema::PluginState::FAILED));
  KJ_IF_MAYBE (workers, input.workers) {
    out.sample("payhost_workers_threads", {}, workers->threads);
    out.sample("payhost_workers_busy", {}, workers->busy);
    out.sample("payhost_workers_waiting", {}, workers->waiting);
    out.sample("payhost_workers_completed_total", {}, static_cast<double>(workers->completed));
    out.sample("payhost_workers_timeouts_total", {}, static_cast<double>(workers->timeouts));
    out.sample("payhost_workers_grown_total", {}, static_cast<double>(workers->grown));
    out.sample("payhost_workers_shrunk_total", {}, static_cast<double>(workers->shrunk));
  }
  for (auto& database : input.databases) {
    auto& stats = database.stats;
    kj::StringPtr pool = database.name;
    out.sample("payhost_db_connections", {{"pool", pool}}, stats.size);
    out.sample("payhost_db_in_use", {{"pool", pool}}, stats.inUse);
    out.sample("payhost_db_waiting", {{"pool", pool}}, stats.waiting);
    out.sample("payhost_db_transactions_total", {{"pool", pool}},
               static_cast<double>(stats.transactions));
    out.sample("payhost_db_timeouts_total", {{"pool", pool}}, static_cast<double>(stats.timeouts));
    out.sample("payhost_db_discarded_total", {{"pool", pool}},
               static_cast<double>(stats.discarded));
    out.sample("payhost_db_wait_seconds_total", {{"pool", pool}},
               static_cast<double>(stats.waitTime / kj::MICROSECONDS) / 1e6);
    out.sample("payhost_db_size", {{"pool", pool}}, stats.capacity);
    out.sample("payhost_db_scaling_total", {{"pool", pool}, {"decision", "grow"}},
               static_cast<double>(stats.grown));
    out.sample("payhost_db_scaling_total", {{"pool", pool}, {"decision", "shrink"}},
               static_cast<double>(stats.shrunk));
  }
  auto& shared = input.shared;
  {
    auto leaked = shared.leaked.lockExclusive();
    for (auto& [key, count] : *leaked) {
      auto& [plugin, pool, outcome] = key;
      out.sample("payhost_leases_leaked_total",
                 {{"plugin", plugin.c_str()}, {"pool", pool.c_str()}, {"outcome", outcome.c_str()}},
                 static_cast<double>(count));
    }
  }
  out.sample("payhost_calls_in_flight", {},
             static_cast<double>(shared.inFlight.load(std::memory_order_relaxed)));
  out.sample("payhost_host_calls_total", {},
             static_cast<double>(shared.total.load(std::memory_order_relaxed)));
  out.sample("payhost_host_calls_failed_total", {},
             static_cast<double>(shared.failed.load(std::memory_order_relaxed)));
  out.sample("payhost_connections_open", {}, input.connectionsOpen);
  out.sample("payhost_shards", {}, input.shards);
  out.sample("payhost_draining", {}, input.draining ? 1 : 0);
  return out.finish();
}

}  // namespace payhost::host
