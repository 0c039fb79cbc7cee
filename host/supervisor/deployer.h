// Hot swap: deploys a plugin package beside the running version of the same plugin, switches
// every shard to it, drains and unloads the old version; rolls back to the previous package;
// runs canaries. Every decision is written to the audit log before it is reported.
//
// One deployment runs at a time; others wait their turn. Control thread only.

#pragma once

#include "host/admin/audit-log.h"
#include "host/config/daemon-config.h"
#include "host/loader/package-signature.h"
#include "host/log/logger.h"
#include "host/registry/registry.h"
#include "host/rpc/shard.h"

#include <payhost/host.capnp.h>

#include <kj/async.h>
#include <kj/timer.h>

namespace payhost::host {

struct DeployOptions {
  kj::String path;
  // 0: switch at once; 1-99: canary share of new calls.
  uint32_t canaryPercent = 0;
  // The new version's config table as TOML; empty keeps the running version's.
  kj::String configToml;
  kj::Maybe<kj::Duration> drainTimeout;
  // What the audit log calls it: "deploy" or "rollback".
  kj::StringPtr action = "deploy";
  // Deploy even an older version than the running one (rollback always does).
  bool force = false;
  // Who asked, for the audit log ("uid=0 pid=42"); empty: payhostd itself.
  kj::String actor;
};

struct DeployResult {
  schema::DeployOutcome outcome = schema::DeployOutcome::UNSPECIFIED;
  kj::String plugin;
  kj::String fromVersion;
  kj::String toVersion;
  uint64_t generation = 0;
  kj::String error;
  uint64_t loadMicros = 0;
  uint64_t switchMicros = 0;
  uint64_t drainMicros = 0;
  uint64_t callsDrained = 0;
  uint64_t callsCut = 0;
  kj::String unloadResult;
  uint64_t stateBytes = 0;
  kj::String canaryDetail;

  void fill(schema::DeployReport::Builder report) const;
};

class Deployer {
public:
  // Everything borrowed outlives the deployer. Packages must be signed by one of `trusted`
  // unless `config.allowUnsigned`.
  Deployer(const DaemonConfig& config, LogSink& log, kj::Timer& timer,
           kj::Vector<kj::Own<Shard>>& shards, Registry& registry, AuditLog& audit,
           const TrustedKeys& trusted);

  // Never rejects for a refused deploy: the result says `refused` and why.
  kj::Promise<DeployResult> deploy(DeployOptions options);
  // Deploys the package that served `service` before the current one.
  kj::Promise<DeployResult> rollback(kj::StringPtr service, kj::StringPtr actor = "");

  // From now on every deploy is refused (shutdown).
  void stop() { stopped = true; }

  // Where the copy of a loaded package is kept.
  kj::String packagePath(const Generation& generation) const;

  struct Deployment;

private:
  kj::Promise<DeployResult> run(DeployOptions options);
  kj::Promise<bool> waitUntil(kj::Function<bool()> done, kj::TimePoint deadline);
  kj::Promise<bool> waitForObjectsGone(Generation& generation, kj::TimePoint deadline);
  kj::Promise<void> switchOver(Deployment& deployment, bool handOverState);
  void publish(Deployment& deployment);
  kj::Promise<void> retire(Deployment& deployment, Generation& old);
  kj::Promise<void> judgeCanary(Deployment& deployment, int round);
  void refuse(Deployment& deployment, kj::String why);
  // Throws when `version` of plugin `name` is older than the running one and `force` is off.
  void checkDowngrade(kj::StringPtr name, kj::StringPtr version, bool force);

  const DaemonConfig& config;
  LogSink& log;
  kj::Timer& timer;
  kj::Vector<kj::Own<Shard>>& shards;
  Registry& registry;
  AuditLog& audit;
  const TrustedKeys& trusted;
  bool stopped = false;
  kj::Promise<void> queue = kj::READY_NOW;
};

}  // namespace payhost::host
