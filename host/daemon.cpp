#include "host/daemon.h"

#include "host/admin/admin-server.h"
#include "host/admin/audit-log.h"
#include "host/admin/security-audit.h"
#include "host/config/reader-limits.h"
#include "host/loader/generation.h"
#include "host/loader/plugin-library.h"
#include "host/metrics/host-metrics.h"
#include "host/metrics/metrics-server.h"
#include "host/metrics/outbound-metrics.h"
#include "host/metrics/security-metrics.h"
#include "host/outbound/outbound.h"
#include "host/pools/key-store.h"
#include "host/pools/sql-pool.h"
#include "host/pools/worker-pool.h"
#include "host/registry/registry.h"
#include "host/rpc/client-policy.h"
#include "host/rpc/shard.h"
#include "host/rpc/tls-server.h"
#include "host/supervisor/deployer.h"
#include "host/util/errors.h"

#include <capnp/rpc-twoparty.h>
#include <kj/async-unix.h>
#include <kj/debug.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#ifndef PAYHOST_VERSION
#error "PAYHOST_VERSION must be defined by the build"
#endif

namespace payhost::host {

kj::StringPtr payhostVersion() {
  return PAYHOST_VERSION;
}

namespace {

// Unix socket paths: a stale socket from a previous run is removed; anything else is refused.
void removeStaleSocket(kj::StringPtr path) {
  struct stat info;
  if (lstat(path.cStr(), &info) != 0) return;
  if (!S_ISSOCK(info.st_mode)) {
    PAYHOST_FAIL(FAILED, path, ": exists and is not a socket; refusing to replace it");
  }
  KJ_SYSCALL(unlink(path.cStr()), path);
}

class LoggingErrorHandler final : public kj::TaskSet::ErrorHandler {
public:
  LoggingErrorHandler(LogSink& log, kj::StringPtr event) : log(log), event(event) {}
  void taskFailed(kj::Exception&& exception) override {
    auto description = exception.getDescription();
    LogField fields[] = {{"error", description}};
    log.write(LogLevel::WARNING, event, nullptr, fields);
  }

private:
  LogSink& log;
  kj::StringPtr event;
};

}  // namespace

class Daemon::Impl final : public MetricsSource {
public:
  Impl(const DaemonConfig& config, LogSink& log, kj::AsyncIoContext& io)
      : config(config), log(log), io(io) {}

  int run();
  void stop() {
    KJ_IF_MAYBE (fulfiller, stopFulfiller) {
      (*fulfiller)->fulfill(kj::str("test"));
    }
  }

private:
  void info(kj::StringPtr event, std::initializer_list<LogField> fields = {}) {
    log.write(LogLevel::INFO, event, nullptr, kj::arrayPtr(fields.begin(), fields.size()));
  }
  void warn(kj::StringPtr event, std::initializer_list<LogField> fields = {}) {
    log.write(LogLevel::WARNING, event, nullptr, kj::arrayPtr(fields.begin(), fields.size()));
  }
  void error(kj::StringPtr event, std::initializer_list<LogField> fields = {}) {
    log.write(LogLevel::ERROR, event, nullptr, kj::arrayPtr(fields.begin(), fields.size()));
  }

  kj::Promise<void> loadPlugin(const PluginConfig& plugin);
  kj::Promise<void> uninstallEverywhere(Generation& generation);
  void openListeners();
  void openAdmin();
  void openMetrics();
  kj::String render() override;
  kj::Maybe<kj::String> notReady() override;
  kj::Promise<void> acceptLoop(kj::ConnectionReceiver& receiver, const Listener& listener);
  kj::Promise<void> reloadOnSighup();
  // One `tls-reload` audit record (outcome "ok" or "failed").
  void auditReload(kj::StringPtr outcome, kj::StringPtr detail);
  kj::Promise<kj::String> waitForStop();
  void shutdown(kj::StringPtr reason);
  void fillStatus(schema::HostStatus::Builder status);

  const DaemonConfig& config;
  LogSink& log;
  kj::AsyncIoContext& io;
  kj::TimePoint startedAt = io.provider->getTimer().now();
  schema::HostState state = schema::HostState::STARTING;

  HostShared counters;
  // Outlives the shards, whose connections count in it.
  kj::Maybe<kj::Own<Outbound>> outbound;
  // What client connections are served under; outlive the shards (declared before them).
  SecurityCounters security;
  AccessPolicy access{config.access};
  ClientPolicy clientPolicy{access, config.limits, security, log};
  // The TLS material new handshakes use; replaced on SIGHUP (connections keep theirs).
  kj::Own<const TlsServer> tls;
  kj::Maybe<kj::Promise<void>> reloadTask;
  kj::Maybe<kj::Own<KeyStore>> keyStore;
  // Destroyed after the worker pool (declared before it): transactions running on it use them.
  kj::Vector<kj::Own<SqlPool>> databases;
  kj::Maybe<kj::Own<WorkerPool>> workers;
  Registry registry;
  kj::Vector<kj::Own<Shard>> shards;
  kj::Maybe<kj::Own<AuditLog>> audit;
  // The throttle shards record failed handshakes and refusals through (in `clientPolicy`).
  kj::Maybe<kj::Own<SecurityAudit>> securityAudit;
  // `[security] trusted_keys`, read at start.
  TrustedKeys trusted;
  kj::Maybe<kj::Own<Deployer>> deployer;
  uint32_t nextShard = 0;

  LoggingErrorHandler acceptErrors{log, "listener.failed"};
  LoggingErrorHandler adminErrors{log, "admin.connection_failed"};
  kj::Vector<kj::String> listenerNames;
  kj::Vector<kj::Own<kj::ConnectionReceiver>> listeners;
  // Accept loops apart from other tasks, so shutdown can cancel them before closing listeners.
  kj::Own<kj::TaskSet> acceptLoops = kj::heap<kj::TaskSet>(acceptErrors);
  kj::Own<kj::TaskSet> acceptTasks = kj::heap<kj::TaskSet>(acceptErrors);
  kj::Maybe<kj::Own<AdminListener>> adminServer;
  kj::Maybe<kj::Own<kj::ConnectionReceiver>> adminListener;
  kj::Maybe<kj::Promise<void>> adminTask;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<kj::String>>> stopFulfiller;
  // Declared last: destroyed first, before anything it reports on.
  kj::String metricsAddress;
  kj::Maybe<kj::Own<kj::ConnectionReceiver>> metricsListener;
  kj::Maybe<kj::Own<MetricsServer>> metricsServer;
  kj::Maybe<kj::Promise<void>> metricsTask;
};

kj::Promise<void> Daemon::Impl::loadPlugin(const PluginConfig& plugin) {
  kj::Own<Generation> generation;
  try {
    LoadPolicy policy;
    policy.trusted = &trusted;
    policy.allowUnsigned = config.allowUnsigned;
    auto library = PluginLibrary::load(plugin.path, registry.nextLoadId(), policy);
    if (library->signer() == nullptr) {
      warn("plugin.unsigned",
           {{"path", plugin.path},
            {"plugin", library->descriptor().name},
            {"warning", "loaded without a signature ([security] allow_unsigned = true)"}});
    }
    // The plugin keeps its own copy of its config table.
    auto pluginConfig = Config::parse(plugin.config.toToml(), plugin.path);
    generation = kj::atomicRefcounted<Generation>(registry.nextLoadId(), kj::mv(library),
                                                  kj::mv(pluginConfig));
    registry.checkServicesFree(*generation);
    generation->keyGrants = KJ_MAP(key, plugin.keys) {
      return kj::heapString(key);
    };
    generation->workersReserve = plugin.workersReserve;
    generation->workersLimit = plugin.workersLimit;
    generation->admissionMaxConcurrent = plugin.admissionMaxConcurrent;
    generation->admissionMaxQueued = plugin.admissionMaxQueued;
    KJ_ASSERT_NONNULL(workers)->setQuota(generation->name(), plugin.workersReserve,
                                         plugin.workersLimit);
    for (auto& name : plugin.databases) {
      bool found = false;
      for (auto& pool : databases) {
        if (pool->name() != name) continue;
        pool->setQuota(generation->name(), plugin.databasesReserve, plugin.databasesLimit);
        found = true;
      }
      if (!found) {
        PAYHOST_FAIL(FAILED, "plugin ", generation->name(), " is granted database '", name,
                     "', which is not configured ([databases.", name, "])");
      }
    }
    generation->databaseGrants = KJ_MAP(name, plugin.databases) {
      return kj::heapString(name);
    };
    KJ_IF_MAYBE (remotes, outbound) {
      (*remotes)->setQuota(generation->name(), plugin.remoteCallsReserve, plugin.remoteCallsLimit);
    }
  } catch (const kj::Exception& e) {
    error("plugin.refused", {{"path", plugin.path}, {"error", e.getDescription()}});
    registry.addFailed(plugin.path, kj::heapString(e.getDescription()));
    AuditRecord record{"load-refused", "", "", "", plugin.path, e.getDescription()};
    record.outcome = "refused";
    KJ_ASSERT_NONNULL(audit)->append(record);
    return kj::READY_NOW;
  }

  kj::Vector<kj::Promise<void>> installs;
  for (auto& shard : shards) {
    installs.add(shard->run([generation = generation->addRef()](ShardState& state) mutable {
      return state.services().install(kj::mv(generation));
    }));
  }
  auto& g = *generation;
  return kj::joinPromises(installs.releaseAsArray())
      .then(
          [this, &plugin, generation = kj::mv(generation)]() mutable {
            auto services = kj::strArray(
                KJ_MAP(service, generation->services()) { return service.name.asPtr(); }, ",");
            info("plugin.loaded",
                 {{"plugin", generation->name()},
                  {"version", generation->version()},
                  {"services", services},
                  {"path", plugin.path},
                  {"sha256", generation->library().sha256()},
                  {"signed_by", generation->library().signer().orDefault("unsigned")},
                  {"generation", kj::str(generation->id())}});
            // A copy of the package, so a later deploy can be rolled back to this version.
            auto& deploys = *KJ_ASSERT_NONNULL(deployer);
            generation->package = deploys.packagePath(*generation);
            try {
              generation->library().saveCopy(generation->package);
            } catch (const kj::Exception& e) {
              warn("plugin.package_not_kept",
                   {{"path", plugin.path}, {"error", e.getDescription()}});
            }
            auto detail = kj::str(plugin.path, ", signed by ",
                                  generation->library().signer().orDefault("nobody (unsigned)"));
            KJ_ASSERT_NONNULL(audit)->append({"load", generation->name(), "", generation->version(),
                                              generation->package, detail});
            auto package = kj::heapString(generation->package);
            registry.addServing(plugin.path, kj::mv(generation)).packages.add(kj::mv(package));
            return kj::Promise<void>(kj::READY_NOW);
          },
          [this, &plugin, failed = g.addRef()](kj::Exception&& e) mutable {
            error("plugin.refused", {{"path", plugin.path}, {"error", e.getDescription()}});
            registry.addFailed(plugin.path, kj::heapString(e.getDescription()));
            AuditRecord record{"load-refused",    failed->name(), "",
                               failed->version(), plugin.path,    e.getDescription()};
            record.outcome = "refused";
            KJ_ASSERT_NONNULL(audit)->append(record);
            // Shards where the instance was created drop it again.
            auto& refused = *failed;
            return uninstallEverywhere(refused).attach(kj::mv(failed));
          });
}

kj::Promise<void> Daemon::Impl::uninstallEverywhere(Generation& generation) {
  kj::Vector<kj::Promise<void>> removals;
  for (auto& shard : shards) {
    removals.add(
        shard->run([&generation](ShardState& state) { state.services().uninstall(generation); }));
  }
  return kj::joinPromises(removals.releaseAsArray());
}

void Daemon::Impl::openListeners() {
  auto open = [this](const Listener& listener, bool isUnix) {
    auto& address = listener.address;
    if (isUnix) removeStaleSocket(address);
    auto text = isUnix ? kj::str("unix:", address) : kj::heapString(address);
    auto parsed = io.provider->getNetwork().parseAddress(text).wait(io.waitScope);
    auto receiver = parsed->listen();
    // With port 0 the kernel picks the port; name the listener by the port it got.
    auto name =
        isUnix ? kj::str("unix:", address)
               : kj::str(kj::heapString(address.slice(0, KJ_ASSERT_NONNULL(address.findLast(':')))),
                         ":", receiver->getPort());
    if (listener.insecure) {
      // Said at every start, so a development listener is never forgotten in production.
      warn("listener.insecure", {{"address", name},
                                 {"identity", listener.identity},
                                 {"note", "plaintext, no client authentication"}});
    }
    info("listener.open", {{"address", name}, {"tls", listener.insecure ? "off" : "on"}});
    acceptLoops->add(acceptLoop(*receiver, listener));
    listeners.add(kj::mv(receiver));
    listenerNames.add(kj::mv(name));
  };
  for (auto& listener : config.tcp)
    open(listener, false);
  for (auto& listener : config.unix)
    open(listener, true);
}

kj::Promise<void> Daemon::Impl::acceptLoop(kj::ConnectionReceiver& receiver,
                                           const Listener& listener) {
  return receiver.accept().then([this, &receiver, &listener](kj::Own<kj::AsyncIoStream>&& stream) {
    KJ_IF_MAYBE (fd, stream->getFd()) {
      // Counted here, uncounted by the shard when the connection goes.
      auto open = security.connectionsOpen.fetch_add(1, std::memory_order_relaxed);
      if (open >= config.limits.maxConnections) {
        security.connectionsOpen.fetch_sub(1, std::memory_order_relaxed);
        security.connectionsOverLimit.fetch_add(1, std::memory_order_relaxed);
        auto limit = kj::str(config.limits.maxConnections);
        warn("connection.refused", {{"reason", "max_connections"}, {"limit", limit}});
        return acceptLoop(receiver, listener);  // `stream` closes the socket
      }
      if (log.enabled(LogLevel::DEBUG)) {
        auto count = kj::str(open + 1);
        LogField fields[] = {{"open", count}};
        log.write(LogLevel::DEBUG, "connection.accepted", nullptr, fields);
      }
      int one = 1;
      // Fails harmlessly on unix sockets.
      setsockopt(*fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      int owned = fcntl(*fd, F_DUPFD_CLOEXEC, 0);
      if (owned >= 0) {
        auto& shard = *shards[nextShard++ % shards.size()];
        kj::Own<const TlsServer> connectionTls;
        if (!listener.insecure) connectionTls = tls->addRef();
        kj::StringPtr identity = listener.identity;
        acceptTasks->add(shard.run(
            [owned, connectionTls = kj::mv(connectionTls), identity](ShardState& state) mutable {
              state.adopt(owned, kj::mv(connectionTls), identity);
            }));
      } else {
        security.connectionsOpen.fetch_sub(1, std::memory_order_relaxed);
      }
    }
    return acceptLoop(receiver, listener);
  });
}

void Daemon::Impl::auditReload(kj::StringPtr outcome, kj::StringPtr detail) {
  // Not throttled: only someone who may signal payhostd causes these. A log that cannot be
  // written is reported, and the reload stands.
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 KJ_ASSERT_NONNULL(audit)->record("tls-reload", "", outcome, detail);
               })) {
    error("audit.write_failed", {{"action", "tls-reload"}, {"error", e->getDescription()}});
  }
}

kj::Promise<void> Daemon::Impl::reloadOnSighup() {
  return io.unixEventPort.onSignal(SIGHUP).then([this](siginfo_t&&) {
    KJ_IF_MAYBE (tlsConfig, config.tls) {
      KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                          [&]() { tls = kj::atomicRefcounted<TlsServer>(*tlsConfig); })) {
        error("tls.reload_failed", {{"error", e->getDescription()},
                                    {"note", "new connections keep the previous certificate"}});
        auditReload("failed", kj::str(e->getDescription(),
                                      "; new connections keep the previous certificate"));
      } else {
        info("tls.reloaded", {{"certificate", tlsConfig->certificate}, {"loaded", tls->summary()}});
        auditReload("ok", kj::str("certificate ", tlsConfig->certificate, ": ", tls->summary()));
      }
    } else {
      info("tls.reload_skipped", {{"reason", "no [tls] in the config"}});
    }
    return reloadOnSighup();
  });
}

void Daemon::Impl::openAdmin() {
  removeStaleSocket(config.adminSocket);
  auto address = io.provider->getNetwork()
                     .parseAddress(kj::str("unix:", config.adminSocket))
                     .wait(io.waitScope);
  // Bound with the process umask (022: only the owner may connect) until the mode is set.
  auto receiver = address->listen();
  // The daemon's user, or with `[admin] group` that group too (0660).
  auto adminGid = secureAdminSocket(config.adminSocket, config.adminGroup);
  auto& auditLog = *KJ_ASSERT_NONNULL(audit);
  auto server = kj::heap<AdminListener>(*receiver, auditLog, adminGid, [this](kj::String actor) {
    return kj::heap<AdminServer>(
        registry, *KJ_ASSERT_NONNULL(deployer), *KJ_ASSERT_NONNULL(audit),
        [this](schema::HostStatus::Builder status) { fillStatus(status); }, kj::mv(actor));
  });
  adminTask = server->run().eagerlyEvaluate([this](kj::Exception&& e) {
    warn("admin.failed", {{"error", e.getDescription()}});
  });
  info("admin.open", {{"socket", config.adminSocket}});
  adminServer = kj::mv(server);
  adminListener = kj::mv(receiver);
}

void Daemon::Impl::openMetrics() {
  if (config.metricsListen.size() == 0) return;
  auto& address = config.metricsListen;
  auto parsed = io.provider->getNetwork().parseAddress(address).wait(io.waitScope);
  auto receiver = parsed->listen();
  metricsAddress =
      kj::str(kj::heapString(address.slice(0, KJ_ASSERT_NONNULL(address.findLast(':')))), ":",
              receiver->getPort());
  auto server = kj::heap<MetricsServer>(io.provider->getTimer(), *this);
  metricsTask = server->listen(*receiver).eagerlyEvaluate([this](kj::Exception&& e) {
    warn("metrics.failed", {{"error", e.getDescription()}});
  });
  info("metrics.open", {{"address", metricsAddress}});
  metricsServer = kj::mv(server);
  metricsListener = kj::mv(receiver);
}

kj::String Daemon::Impl::render() {
  uint32_t open = 0;
  for (auto& shard : shards)
    open += shard->connectionsOpen();
  HostMetricsInput input{registry, counters, nullptr, {}, 0, 0, false};
  KJ_IF_MAYBE (pool, workers) {
    input.workers = (*pool)->stats();
  }
  for (auto& database : databases) {
    input.databases.add(HostMetricsInput::Database{database->name(), database->stats()});
  }
  input.connectionsOpen = open;
  input.shards = shards.size();
  input.draining = state == schema::HostState::DRAINING;
  SecurityMetricsInput securityInput;
  securityInput.accessDenied = security.accessDenied.load(std::memory_order_relaxed);
  securityInput.connectionsOverLimit =
      security.connectionsOverLimit.load(std::memory_order_relaxed);
  securityInput.handshakesFailed = security.handshakesFailed.load(std::memory_order_relaxed);
  securityInput.handshakesTimedOut = security.handshakesTimedOut.load(std::memory_order_relaxed);
  securityInput.connectionsIdleClosed =
      security.connectionsIdleClosed.load(std::memory_order_relaxed);
  securityInput.callsOverLimit = security.callsOverLimit.load(std::memory_order_relaxed);
  auto text = kj::str(renderHostMetrics(input), renderSecurityMetrics(securityInput));
  KJ_IF_MAYBE (remotes, outbound) {
    return kj::str(text, renderOutboundMetrics(**remotes));
  }
  return text;
}

kj::Maybe<kj::String> Daemon::Impl::notReady() {
  if (state == schema::HostState::DRAINING) return kj::str("host is draining");
  if (state != schema::HostState::SERVING) return kj::str("host is starting");
  for (auto& record : registry.plugins()) {
    if (record.state != schema::PluginState::SERVING) {
      return kj::str("plugin ", record.path, " is not serving: ", record.error);
    }
  }
  return nullptr;
}

void Daemon::Impl::fillStatus(schema::HostStatus::Builder status) {
  status.setVersion(payhostVersion());
  status.setPid(getpid());
  status.setUptimeMs((io.provider->getTimer().now() - startedAt) / kj::MILLISECONDS);
  status.setShards(shards.size());
  status.setState(state);
  uint32_t open = 0;
  for (auto& shard : shards)
    open += shard->connectionsOpen();
  status.setConnectionsOpen(open);
  status.setCallsInFlight(counters.inFlight.load(std::memory_order_relaxed));
  status.setCallsTotal(counters.total.load(std::memory_order_relaxed));
  status.setCallsFailed(counters.failed.load(std::memory_order_relaxed));
  status.setPluginsServing(registry.count(schema::PluginState::SERVING));
  status.setPluginsFailed(registry.count(schema::PluginState::FAILED));
  auto names = status.initListeners(listenerNames.size());
  for (size_t i = 0; i < names.size(); ++i)
    names.set(i, listenerNames[i]);
  status.setMetricsAddress(metricsAddress);
}

kj::Promise<kj::String> Daemon::Impl::waitForStop() {
  auto paf = kj::newPromiseAndFulfiller<kj::String>();
  stopFulfiller = kj::mv(paf.fulfiller);
  auto signal = [this](int number, kj::StringPtr name) {
    return io.unixEventPort.onSignal(number).then(
        [name](siginfo_t&&) { return kj::heapString(name); });
  };
  return signal(SIGTERM, "SIGTERM")
      .exclusiveJoin(signal(SIGINT, "SIGINT"))
      .exclusiveJoin(kj::mv(paf.promise));
}

void Daemon::Impl::shutdown(kj::StringPtr reason) {
  state = schema::HostState::DRAINING;
  KJ_IF_MAYBE (deploys, deployer) {
    (*deploys)->stop();
  }
  auto& timer = io.provider->getTimer();
  auto deadline = timer.now() + config.drainTimeout;
  // Stop accepting and have every shard refuse new calls before saying so: once `host.draining`
  // is logged, new connections are refused and new calls fail with DISCONNECTED.
  acceptLoops = kj::heap<kj::TaskSet>(acceptErrors);
  listeners.clear();
  kj::Vector<kj::Promise<void>> refusing;
  for (auto& shard : shards) {
    refusing.add(shard->run([](ShardState& shardState) { shardState.services().startDraining(); }));
  }
  kj::joinPromises(refusing.releaseAsArray()).wait(io.waitScope);
  auto inFlight = counters.inFlight.load();
  info("host.draining", {{"reason", reason}, {"calls_in_flight", kj::str(inFlight)}});

  // A call counts as done when its answer is queued, not sent: each shard, once idle, closes its
  // connections so that queued answers go out first.
  kj::Vector<kj::Promise<void>> idle;
  for (auto& shard : shards) {
    idle.add(shard->run([](ShardState& shardState) {
      return shardState.services().whenIdle().then(
          [&shardState]() { return shardState.closeConnections(); });
    }));
  }
  bool drained = kj::joinPromises(idle.releaseAsArray())
                     .then([]() { return true; })
                     .exclusiveJoin(timer.atTime(deadline).then([]() { return false; }))
                     .wait(io.waitScope);
  if (drained) {
    info("host.drained");
  } else {
    warn("host.drain_deadline", {{"calls_cut", kj::str(counters.inFlight.load())},
                                 {"deadline_ms", kj::str(config.drainTimeout / kj::MILLISECONDS)}});
  }

  // No deploy may touch the shards from here on; one in progress is cancelled with its call.
  adminTask = nullptr;
  adminServer = nullptr;
  adminListener = nullptr;

  kj::Vector<kj::Promise<void>> stops;
  for (auto& shard : shards)
    stops.add(shard->stop());
  kj::joinPromises(stops.releaseAsArray()).wait(io.waitScope);
  shards.clear();
  // Offloaded work runs plugin code: it finishes before any library is closed.
  counters.workers = nullptr;
  workers = nullptr;
  counters.databases = nullptr;
  databases.clear();

  // The shards are gone: the security events they suppressed get their summary records.
  KJ_IF_MAYBE (throttle, securityAudit) {
    clientPolicy.audit = nullptr;
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { (*throttle)->flush(); })) {
      error("audit.write_failed", {{"action", "summary"}, {"error", e->getDescription()}});
    }
  }
  for (auto& record : registry.plugins()) {
    KJ_IF_MAYBE (generation, record.generation) {
      auto& g = **generation;
      auto live = g.library().liveObjects();
      auto result = g.library().unload();
      auto fields = {LogField{"plugin", g.name()}, LogField{"version", g.version()},
                     LogField{"result", unloadResultName(result)}};
      KJ_IF_MAYBE (log, audit) {
        (*log)->append({"unload", g.name(), g.version(), "", "",
                        kj::str(unloadResultName(result), ", at shutdown")});
      }
      if (result == PluginLibrary::UnloadResult::UNMAPPED) {
        info("plugin.unloaded", fields);
      } else {
        auto liveText = kj::str(live);
        warn("plugin.not_unloaded", {{"plugin", g.name()},
                                     {"version", g.version()},
                                     {"result", unloadResultName(result)},
                                     {"live_objects", liveText}});
      }
    }
  }
  metricsTask = nullptr;
  metricsServer = nullptr;
  metricsListener = nullptr;
  unlink(config.adminSocket.cStr());
  for (auto& listener : config.unix)
    unlink(listener.address.cStr());
  info("host.stopped");
}

int Daemon::Impl::run() {
  info("host.starting", {{"version", payhostVersion()},
                         {"config", config.sourcePath},
                         {"shards", kj::str(config.shards)},
                         {"pid", kj::str(getpid())}});
  // Signals first: captured before any shard thread exists, so every thread inherits the mask.
  auto stopRequested = waitForStop();

  try {
    std::error_code ignored;
    // Packages are copied here as they load (for rollback), the configured ones included.
    std::filesystem::create_directories(kj::str(config.dataDir, "/packages").cStr(), ignored);
    audit = kj::heap<AuditLog>(kj::str(config.dataDir, "/audit.log"));
    auto throttle = kj::heap<SecurityAudit>(*KJ_ASSERT_NONNULL(audit));
    clientPolicy.audit = throttle.get();
    securityAudit = kj::mv(throttle);
    trusted = TrustedKeys::load(config.trustedKeys);
    if (config.allowUnsigned) {
      warn("security.unsigned_allowed",
           {{"warning",
             "[security] allow_unsigned = true: plugins without a signature load "
             "(development only)"}});
    }
    auto keys = kj::heap<KeyStore>(config.keys);
    counters.keys = keys.get();
    keyStore = kj::mv(keys);
    WorkerPool::Options options;
    options.minThreads = config.workersMin;
    options.maxThreads = config.workersMax;
    options.leaseWait = config.workersLeaseWait;
    options.scaleInterval = config.workersScaleInterval;
    auto pool = kj::heap<WorkerPool>(options, log);
    counters.workers = pool.get();
    workers = kj::mv(pool);
    for (auto& database : config.databases) {
      SqlPool::Options sqlOptions;
      sqlOptions.name = kj::heapString(database.name);
      if (database.driver == DatabaseDriver::SQLITE) {
        sqlOptions.dialect = SqlDialect::SQLITE;
        sqlOptions.target = kj::heapString(database.path);
        auto parent = std::filesystem::path(database.path.cStr()).parent_path();
        std::filesystem::create_directories(parent, ignored);
      } else {
        sqlOptions.dialect = SqlDialect::POSTGRESQL;
        sqlOptions.target = kj::heapString(database.conninfo);
      }
      sqlOptions.minConnections = database.minConnections;
      sqlOptions.maxConnections = database.maxConnections;
      sqlOptions.leaseWait = database.leaseWait;
      sqlOptions.scaling = database.scale;
      sqlOptions.growAfter = database.growAfter;
      sqlOptions.idleTimeout = database.idleTimeout;
      databases.add(kj::heap<SqlPool>(kj::mv(sqlOptions), *KJ_ASSERT_NONNULL(workers), log));
    }
    counters.databases = databases;
    if (config.remotes.size() > 0) {
      auto remotes = kj::heap<Outbound>(config.remotes);
      for (auto& remote : remotes->remotes()) {
        auto& entry = remote->config;
        for (auto& service : entry.services)
          registry.addRemoteService(service, entry.name);
        auto services = kj::strArray(entry.services, ",");
        auto keepalive = kj::str(entry.keepalive / kj::MILLISECONDS);
        KJ_IF_MAYBE (client, remote->tls) {
          info("remote.configured", {{"remote", entry.name},
                                     {"address", entry.address},
                                     {"services", services},
                                     {"tls", "on"},
                                     {"server_name", KJ_ASSERT_NONNULL(entry.tls).serverName},
                                     {"certificate", (*client)->summary()},
                                     {"keepalive_ms", keepalive}});
        } else {
          // Said at every start, so a plaintext remote is never forgotten in production.
          warn("remote.insecure",
               {{"remote", entry.name},
                {"address", entry.address},
                {"note", "plaintext, the remote cannot authenticate this host"}});
          info("remote.configured", {{"remote", entry.name},
                                     {"address", entry.address},
                                     {"services", services},
                                     {"tls", "off"},
                                     {"keepalive_ms", keepalive}});
        }
      }
      counters.outbound = remotes.get();
      outbound = kj::mv(remotes);
    }
    KJ_IF_MAYBE (tlsConfig, config.tls) {
      tls = kj::atomicRefcounted<TlsServer>(*tlsConfig);
      info("tls.loaded",
           {{"certificate", tlsConfig->certificate},
            {"loaded", tls->summary()},
            {"client_certificates", tlsConfig->requireClientCertificate ? "required" : "optional"},
            {"identity", identitySourceName(tlsConfig->identity)}});
    }
  } catch (const kj::Exception& e) {
    error("host.start_failed", {{"error", e.getDescription()}});
    return 1;
  }

  auto readerOptions = clientReaderOptions(config.limits);
  for (uint32_t i = 0; i < config.shards; ++i) {
    shards.add(kj::heap<Shard>(i, config.shards, log, counters, readerOptions, clientPolicy));
  }
  reloadTask = reloadOnSighup().eagerlyEvaluate([this](kj::Exception&& e) {
    warn("tls.reload_failed", {{"error", e.getDescription()}});
  });
  deployer = kj::heap<Deployer>(config, log, io.provider->getTimer(), shards, registry,
                                *KJ_ASSERT_NONNULL(audit), trusted);
  for (auto& plugin : config.plugins) {
    if (!plugin.enabled) {
      info("plugin.disabled", {{"path", plugin.path}});
      continue;
    }
    loadPlugin(plugin).wait(io.waitScope);
  }

  try {
    openListeners();
    openAdmin();
    openMetrics();
  } catch (const kj::Exception& e) {
    error("host.start_failed", {{"error", e.getDescription()}});
    shutdown("start failed");
    return 1;
  }

  state = schema::HostState::SERVING;
  info("host.ready", {{"listeners", kj::strArray(listenerNames, ",")},
                      {"plugins_serving", kj::str(registry.count(schema::PluginState::SERVING))},
                      {"plugins_failed", kj::str(registry.count(schema::PluginState::FAILED))}});
  auto reason = stopRequested.wait(io.waitScope);
  shutdown(reason);
  return 0;
}

Daemon::Daemon(const DaemonConfig& config, LogSink& log, kj::AsyncIoContext& io)
    : impl(kj::heap<Impl>(config, log, io)) {}

Daemon::~Daemon() noexcept(false) = default;

int Daemon::run() {
  return impl->run();
}

void Daemon::stopForTest() {
  impl->stop();
}

}  // namespace payhost::host
