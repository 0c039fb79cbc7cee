#include "host/supervisor/deployer.h"

#include "host/loader/plugin-library.h"
#include "host/util/errors.h"

#include <kj/debug.h>

#include <atomic>
#include <filesystem>

namespace payhost::host {

namespace {

// Runs `make()`'s function on every shard (each gets its own copy) and joins the results.
template <typename Make>
kj::Promise<void> everyShard(kj::Vector<kj::Own<Shard>>& shards, Make&& make) {
  kj::Vector<kj::Promise<void>> all;
  for (auto& shard : shards)
    all.add(shard->run(make()));
  return kj::joinPromises(all.releaseAsArray());
}

uint64_t microsSince(kj::TimePoint start) {
  return (kj::systemPreciseMonotonicClock().now() - start) / kj::MICROSECONDS;
}

}  // namespace

struct Deployer::Deployment {
  DeployOptions options;
  DeployResult result;
  kj::TimePoint started = kj::systemPreciseMonotonicClock().now();
  kj::Own<Generation> fresh;
  kj::Maybe<kj::Own<Generation>> old;
  std::atomic<uint64_t> stateBytes{0};
  std::atomic<uint32_t> importFailures{0};
  kj::String importError;
  // When every shard routed to the new version, and the old version's calls in flight then.
  kj::TimePoint switchedAt = started;
  uint32_t inFlightAtSwitch = 0;
};

void DeployResult::fill(schema::DeployReport::Builder report) const {
  report.setOutcome(outcome);
  report.setPlugin(plugin);
  report.setFromVersion(fromVersion);
  report.setToVersion(toVersion);
  report.setGeneration(generation);
  report.setError(error);
  report.setLoadMicros(loadMicros);
  report.setSwitchMicros(switchMicros);
  report.setDrainMicros(drainMicros);
  report.setCallsDrained(callsDrained);
  report.setCallsCut(callsCut);
  report.setUnloadResult(unloadResult);
  report.setStateBytes(stateBytes);
  report.setCanaryDetail(canaryDetail);
}

Deployer::Deployer(const DaemonConfig& config, LogSink& log, kj::Timer& timer,
                   kj::Vector<kj::Own<Shard>>& shards, Registry& registry, AuditLog& audit,
                   const TrustedKeys& trusted)
    : config(config),
      log(log),
      timer(timer),
      shards(shards),
      registry(registry),
      audit(audit),
      trusted(trusted) {}

void Deployer::checkDowngrade(kj::StringPtr name, kj::StringPtr version, bool force) {
  KJ_IF_MAYBE (record, registry.findPlugin(name)) {
    KJ_IF_MAYBE (running, record->generation) {
      auto current = (*running)->version();
      auto order = compareVersions(version, current);
      bool older = true;
      KJ_IF_MAYBE (o, order) {
        older = *o < 0;
      }
      if (older && !force) {
        PAYHOST_FAIL(FAILED, "downgrade refused: ", name, " ", version,
                     order == nullptr ? " cannot be ordered against the running version "
                                      : " is older than the running version ",
                     current, " (deploy it with payhostctl deploy --force to go back on purpose)");
      }
    }
  }
}

kj::String Deployer::packagePath(const Generation& generation) const {
  return kj::str(config.dataDir, "/packages/", generation.name(), "-", generation.version(), "-",
                 generation.library().sha256().slice(0, 16), ".so");
}

kj::Promise<DeployResult> Deployer::deploy(DeployOptions options) {
  // One at a time: each deployment starts when the one before it has finished.
  auto paf = kj::newPromiseAndFulfiller<void>();
  auto previous = kj::mv(queue);
  queue = kj::mv(paf.promise);
  return previous.then([this, options = kj::mv(options)]() mutable { return run(kj::mv(options)); })
      .attach(kj::defer([fulfiller = kj::mv(paf.fulfiller)]() mutable { fulfiller->fulfill(); }));
}

kj::Promise<DeployResult> Deployer::rollback(kj::StringPtr service, kj::StringPtr actor) {
  DeployOptions options;
  options.action = "rollback";
  // Going back to the version before is what a rollback is for.
  options.force = true;
  options.actor = kj::heapString(actor);
  KJ_IF_MAYBE (record, registry.findService(service)) {
    if (record->packages.size() < 2) {
      DeployResult result;
      result.outcome = schema::DeployOutcome::REFUSED;
      result.error =
          kj::str("no earlier version of the plugin serving '", service, "' to roll back to");
      return kj::mv(result);
    }
    options.path = kj::heapString(record->packages[record->packages.size() - 2]);
  } else {
    DeployResult result;
    result.outcome = schema::DeployOutcome::REFUSED;
    result.error = kj::str("no plugin serves '", service, "'");
    return kj::mv(result);
  }
  return deploy(kj::mv(options));
}

void Deployer::refuse(Deployment& d, kj::String why) {
  d.result.outcome = schema::DeployOutcome::REFUSED;
  d.result.error = kj::mv(why);
  LogField fields[] = {{"path", d.options.path},
                       {"plugin", d.result.plugin},
                       {"from", d.result.fromVersion},
                       {"to", d.result.toVersion},
                       {"error", d.result.error}};
  log.write(LogLevel::WARNING, "deploy.refused", nullptr, fields);
  AuditRecord record{"refuse",           d.result.plugin, d.result.fromVersion,
                     d.result.toVersion, d.options.path,  d.result.error};
  record.actor = d.options.actor;
  record.outcome = "refused";
  audit.append(record);
}

kj::Promise<bool> Deployer::waitUntil(kj::Function<bool()> done, kj::TimePoint deadline) {
  if (done()) return true;
  if (timer.now() >= deadline) return false;
  return timer.afterDelay(1 * kj::MILLISECONDS)
      .then([this, done = kj::mv(done), deadline]() mutable {
        return waitUntil(kj::mv(done), deadline);
      });
}

kj::Promise<bool> Deployer::waitForObjectsGone(Generation& generation, kj::TimePoint deadline) {
  // A plugin's objects die a turn or two after their capabilities are dropped (the membrane
  // cancels what raced against revocation): let every shard's loop turn, then count again.
  return everyShard(shards, []() { return [](ShardState&) { return kj::evalLater([]() {}); }; })
      .then([this, &generation, deadline]() -> kj::Promise<bool> {
        if (generation.library().liveObjects() == 0 && generation.offloadsPending.load() == 0) {
          return true;
        }
        if (timer.now() >= deadline) return false;
        return timer.afterDelay(1 * kj::MILLISECONDS).then([this, &generation, deadline]() {
          return waitForObjectsGone(generation, deadline);
        });
      });
}

kj::Promise<DeployResult> Deployer::run(DeployOptions options) {
  auto owned = kj::heap<Deployment>();
  auto& d = *owned;
  d.options = kj::mv(options);
  if (stopped) {
    refuse(d, kj::str("payhostd is shutting down"));
    return kj::mv(d.result);
  }
  try {
    kj::Function<void(const PackageManifest&)> vet = [this, &d](const PackageManifest& manifest) {
      d.result.plugin = kj::heapString(manifest.name);
      d.result.toVersion = kj::heapString(manifest.version);
      KJ_IF_MAYBE (record, registry.findPlugin(manifest.name)) {
        KJ_IF_MAYBE (running, record->generation) {
          d.result.fromVersion = kj::heapString((*running)->version());
        }
      }
      // Before any of the package's code runs.
      checkDowngrade(manifest.name, manifest.version, d.options.force);
    };
    LoadPolicy policy;
    policy.trusted = &trusted;
    policy.allowUnsigned = config.allowUnsigned;
    policy.vetManifest = vet;
    auto library = PluginLibrary::load(d.options.path, registry.nextLoadId(), policy);
    kj::StringPtr name = library->descriptor().name;
    if (library->signer() == nullptr) {
      LogField fields[] = {{"path", d.options.path}, {"plugin", name}};
      log.write(LogLevel::WARNING, "plugin.unsigned", nullptr, fields);
    }
    // Unsigned packages (development) are checked here, after loading.
    checkDowngrade(name, library->descriptor().version, d.options.force);
    d.result.plugin = kj::heapString(name);
    d.result.toVersion = kj::heapString(library->descriptor().version);
    KJ_IF_MAYBE (record, registry.findPlugin(name)) {
      auto& running = KJ_ASSERT_NONNULL(record->generation);
      d.result.fromVersion = kj::heapString(running->version());
      d.old = running->addRef();
    }
    Config pluginConfig;
    if (d.options.configToml.size() > 0) {
      pluginConfig =
          Config::parse(d.options.configToml, kj::str(d.options.path, " (deploy config)"));
    } else KJ_IF_MAYBE (old, d.old) {
      pluginConfig = Config::parse((*old)->config().toToml(), (*old)->library().path());
    }
    d.fresh = kj::atomicRefcounted<Generation>(registry.nextLoadId(), kj::mv(library),
                                               kj::mv(pluginConfig));
    d.result.generation = d.fresh->id();
    // Grants and quotas belong to the plugin, not to a version: the new one inherits them.
    KJ_IF_MAYBE (old, d.old) {
      d.fresh->keyGrants = KJ_MAP(key, (*old)->keyGrants) {
        return kj::heapString(key);
      };
      d.fresh->databaseGrants = KJ_MAP(database, (*old)->databaseGrants) {
        return kj::heapString(database);
      };
      d.fresh->workersReserve = (*old)->workersReserve;
      d.fresh->workersLimit = (*old)->workersLimit;
      d.fresh->admissionMaxConcurrent = (*old)->admissionMaxConcurrent;
      d.fresh->admissionMaxQueued = (*old)->admissionMaxQueued;
    }
    KJ_IF_MAYBE (old, d.old) {
      registry.checkServicesFree(*d.fresh, **old);
      for (auto& service : (*old)->services()) {
        bool kept = false;
        for (auto& offered : d.fresh->services())
          kept = kept || offered.name == service.name;
        if (!kept) {
          PAYHOST_FAIL(FAILED, d.options.path, ": version ", d.fresh->version(),
                       " no longer provides service '", service.name, "' that version ",
                       (*old)->version(), " serves");
        }
      }
    } else {
      registry.checkServicesFree(*d.fresh);
    }
    d.fresh->package = packagePath(*d.fresh);
    std::error_code error;
    std::filesystem::create_directories(kj::str(config.dataDir, "/packages").cStr(), error);
    d.fresh->library().saveCopy(d.fresh->package);
  } catch (const kj::Exception& e) {
    refuse(d, kj::heapString(e.getDescription()));
    return kj::mv(d.result);
  }

  auto prepared =
      everyShard(shards, [&d]() {
        return [fresh = d.fresh->addRef()](ShardState& state) mutable {
          return state.services().prepare(kj::mv(fresh));
        };
      }).exclusiveJoin(timer.afterDelay(config.readyTimeout).then([this]() -> kj::Promise<void> {
        return KJ_EXCEPTION(FAILED, kj::str("the readiness check did not finish within ",
                                            config.readyTimeout / kj::MILLISECONDS, " ms"));
      }));
  return prepared
      .then(
          [this, &d]() -> kj::Promise<void> {
            d.result.loadMicros = microsSince(d.started);
            if (d.options.canaryPercent > 0 && d.old != nullptr) {
              auto percent = d.options.canaryPercent;
              return everyShard(shards,
                                [&d, percent]() {
                                  return [&d, percent](ShardState& state) {
                                    state.services().setCanary(*d.fresh, percent);
                                  };
                                })
                  .then([this, &d]() {
                    auto percentText = kj::str(d.options.canaryPercent);
                    LogField fields[] = {{"plugin", d.result.plugin},
                                         {"version", d.result.toVersion},
                                         {"percent", percentText}};
                    log.write(LogLevel::INFO, "canary.started", nullptr, fields);
                    audit.append({"canary", d.result.plugin, d.result.fromVersion,
                                  d.result.toVersion, d.fresh->package,
                                  kj::str(d.options.canaryPercent, "% of new calls")});
                    return judgeCanary(d, 0);
                  });
            }
            return switchOver(d, true);
          },
          [this, &d](kj::Exception&& e) -> kj::Promise<void> {
            auto why = kj::heapString(e.getDescription());
            return everyShard(shards,
                              [&d]() {
                                return [&d](ShardState& state) {
                                  state.services().uninstall(*d.fresh);
                                };
                              })
                .then([this, &d, why = kj::mv(why)]() mutable {
                  refuse(d, kj::str(d.options.path, ": not deployed: ", why));
                });
          })
      .then([owned = kj::mv(owned)]() mutable { return kj::mv(owned->result); });
}

kj::Promise<void> Deployer::switchOver(Deployment& d, bool handOverState) {
  auto switchStart = kj::systemPreciseMonotonicClock().now();
  // On each shard in one turn: the old instance's state goes to the new one and the route
  // switches, so no call falls between them. A shard whose import fails keeps the old version.
  return everyShard(shards,
                    [&d, handOverState]() {
                      return [&d, handOverState](ShardState& state) {
                        auto& services = state.services();
                        try {
                          if (handOverState) {
                            KJ_IF_MAYBE (old, d.old) {
                              KJ_IF_MAYBE (saved, services.exportState(**old)) {
                                services.importState(*d.fresh, *saved);
                                d.stateBytes.fetch_add(saved->size() * sizeof(capnp::word));
                              }
                            }
                          }
                        } catch (const kj::Exception& e) {
                          if (d.importFailures.fetch_add(1) == 0) {
                            d.importError = kj::heapString(e.getDescription());
                          }
                          return;
                        }
                        services.activate(*d.fresh);
                      };
                    })
      .then([this, &d, switchStart]() -> kj::Promise<void> {
        if (d.importFailures.load() > 0) {
          // Back to the old version everywhere, then drop the new one.
          return everyShard(shards,
                            [&d]() {
                              return [&d](ShardState& state) {
                                KJ_IF_MAYBE (old, d.old) {
                                  state.services().activate(**old);
                                }
                                state.services().uninstall(*d.fresh);
                              };
                            })
              .then([this, &d]() {
                refuse(d, kj::str(d.options.path, ": not deployed: the new version refused the ",
                                  "running version's state: ", d.importError));
              });
        }
        d.result.switchMicros = microsSince(switchStart);
        d.result.stateBytes = d.stateBytes.load() / shards.size();
        // Measured here, not after publishing: the audit log's fsync takes long enough for the
        // old version's short calls to finish unseen.
        d.switchedAt = kj::systemPreciseMonotonicClock().now();
        KJ_IF_MAYBE (old, d.old) {
          d.inFlightAtSwitch = (*old)->callsInFlight.load();
        }
        publish(d);
        KJ_IF_MAYBE (old, d.old) {
          return retire(d, **old);
        }
        d.result.outcome = schema::DeployOutcome::DEPLOYED;
        d.result.unloadResult = kj::str("none");
        return kj::READY_NOW;
      });
}

void Deployer::publish(Deployment& d) {
  KJ_IF_MAYBE (record, registry.findPlugin(d.result.plugin)) {
    record->generation = d.fresh->addRef();
    record->path = kj::heapString(d.options.path);
    record->state = schema::PluginState::SERVING;
    if (d.options.action == "rollback" && record->packages.size() >= 2) {
      record->packages.removeLast();
    } else if (record->packages.empty() || record->packages.back() != d.fresh->package) {
      // Redeploying the package that is already current adds no step to roll back through.
      record->packages.add(kj::heapString(d.fresh->package));
    }
  } else {
    auto& added = registry.addServing(d.options.path, d.fresh->addRef());
    added.packages.add(kj::heapString(d.fresh->package));
  }
  d.result.outcome = schema::DeployOutcome::DEPLOYED;
  // Named, so they outlive `fields` (a temporary would die at the end of the declaration).
  auto generationText = kj::str(d.fresh->id());
  auto loadText = kj::str(d.result.loadMicros);
  auto switchText = kj::str(d.result.switchMicros);
  auto stateText = kj::str(d.result.stateBytes);
  LogField fields[] = {{"action", d.options.action},   {"plugin", d.result.plugin},
                       {"from", d.result.fromVersion}, {"to", d.result.toVersion},
                       {"generation", generationText}, {"load_us", loadText},
                       {"switch_us", switchText},      {"state_bytes", stateText}};
  log.write(LogLevel::INFO, "deploy.switched", nullptr, fields);
  auto detail = kj::str("generation ", d.fresh->id(), ", load ", d.result.loadMicros,
                        " us, switch ", d.result.switchMicros, " us, signed by ",
                        d.fresh->library().signer().orDefault("nobody (unsigned)"),
                        d.options.force ? ", forced" : "");
  AuditRecord record{d.options.action,   d.result.plugin,  d.result.fromVersion,
                     d.result.toVersion, d.fresh->package, detail};
  record.actor = d.options.actor;
  audit.append(record);
}

kj::Promise<void> Deployer::retire(Deployment& d, Generation& old) {
  auto drainStart = d.switchedAt;
  auto inFlight = d.inFlightAtSwitch;
  auto drainTimeout = d.options.drainTimeout.orDefault(config.deployDrainTimeout);
  registry.retiring(old);
  return waitUntil([&old]() { return old.callsInFlight.load() == 0; }, timer.now() + drainTimeout)
      .then([this, &d, &old, drainStart, inFlight](bool) {
        d.result.drainMicros = microsSince(drainStart);
        d.result.callsCut = old.callsInFlight.load();
        d.result.callsDrained = inFlight > d.result.callsCut ? inFlight - d.result.callsCut : 0;
        // Revokes the old version's membrane: calls still in flight fail "service was replaced".
        return everyShard(shards, [&old]() {
          return [&old](ShardState& state) { state.services().uninstall(old); };
        });
      })
      .then([this, &old]() { return waitForObjectsGone(old, timer.now() + config.unloadTimeout); })
      .then([this, &d, &old](bool gone) {
        auto live = old.library().liveObjects();
        // Work it offloaded that still runs is plugin code on a worker thread, which cannot be
        // stopped: closing the library under it would crash the host. Park it instead; the library
        // closes when the last of that work ends and drops the generation.
        auto result = old.offloadsPending.load() == 0 ? old.library().unload()
                                                      : PluginLibrary::UnloadResult::PARKED;
        d.result.unloadResult = kj::heapString(unloadResultName(result));
        registry.retired(old, result == PluginLibrary::UnloadResult::PARKED);
        auto generationText = kj::str(old.id());
        auto liveText = kj::str(gone ? 0 : live);
        auto drainedText = kj::str(d.result.callsDrained);
        auto cutText = kj::str(d.result.callsCut);
        auto drainText = kj::str(d.result.drainMicros);
        LogField fields[] = {{"plugin", old.name()},         {"version", old.version()},
                             {"generation", generationText}, {"result", d.result.unloadResult},
                             {"live_objects", liveText},     {"calls_drained", drainedText},
                             {"calls_cut", cutText},         {"drain_us", drainText}};
        log.write(
            result == PluginLibrary::UnloadResult::UNMAPPED ? LogLevel::INFO : LogLevel::WARNING,
            "plugin.unloaded", nullptr, fields);
        audit.append({"unload", old.name(), old.version(), "", "",
                      kj::str(d.result.unloadResult, ", drained ", d.result.callsDrained, ", cut ",
                              d.result.callsCut)});
      });
}

kj::Promise<void> Deployer::judgeCanary(Deployment& d, int round) {
  return timer.afterDelay(config.canaryWindow).then([this, &d, round]() -> kj::Promise<void> {
    auto& fresh = *d.fresh;
    auto total = fresh.callsTotal.load();
    auto failed = fresh.callsFailed.load();
    if (total < config.canaryMinCalls && round < 3) return judgeCanary(d, round + 1);
    double errorRate = total == 0 ? 0 : static_cast<double>(failed) / total;
    auto p99 = fresh.latencyPercentile(99);
    bool healthy = total >= config.canaryMinCalls && errorRate <= config.canaryMaxErrorRate &&
                   p99 <= config.canaryMaxP99;
    d.result.canaryDetail = kj::str(
        "calls ", total, ", failed ", failed, " (error rate ", errorRate, ", limit ",
        config.canaryMaxErrorRate, "), p99 ", p99 / kj::MICROSECONDS, " us (limit ",
        config.canaryMaxP99 / kj::MICROSECONDS, " us), minimum calls ", config.canaryMinCalls);
    LogField fields[] = {{"plugin", d.result.plugin},
                         {"version", d.result.toVersion},
                         {"decision", healthy ? "promote" : "rollback"},
                         {"figures", d.result.canaryDetail}};
    log.write(LogLevel::INFO, "canary.decided", nullptr, fields);
    if (healthy) {
      audit.append({"promote", d.result.plugin, d.result.fromVersion, d.result.toVersion,
                    d.fresh->package, d.result.canaryDetail});
      // The canary has been serving with its own state; it keeps it.
      return switchOver(d, false).then([&d]() {
        if (d.result.outcome == schema::DeployOutcome::DEPLOYED) {
          d.result.outcome = schema::DeployOutcome::CANARY_PROMOTED;
        }
      });
    }
    audit.append({"canary-rollback", d.result.plugin, d.result.fromVersion, d.result.toVersion,
                  d.fresh->package, d.result.canaryDetail});
    // New calls go to the old version only; the canary's calls in flight finish where they are
    // (up to the drain deadline) before it is removed, as a replaced version's would.
    auto drainTimeout = d.options.drainTimeout.orDefault(config.deployDrainTimeout);
    registry.retiring(*d.fresh);
    return everyShard(shards,
                      [&d]() {
                        return [&d](ShardState& state) { state.services().clearCanary(*d.fresh); };
                      })
        .then([this, &d, drainTimeout]() {
          return waitUntil([&d]() { return d.fresh->callsInFlight.load() == 0; },
                           timer.now() + drainTimeout);
        })
        .then([this, &d](bool) {
          return everyShard(shards, [&d]() {
            return [&d](ShardState& state) { state.services().uninstall(*d.fresh); };
          });
        })
        .then([this, &d]() {
          return waitForObjectsGone(*d.fresh, timer.now() + config.unloadTimeout);
        })
        .then([this, &d](bool) {
          auto result = d.fresh->offloadsPending.load() == 0 ? d.fresh->library().unload()
                                                             : PluginLibrary::UnloadResult::PARKED;
          d.result.unloadResult = kj::heapString(unloadResultName(result));
          registry.retired(*d.fresh, result == PluginLibrary::UnloadResult::PARKED);
          d.result.outcome = schema::DeployOutcome::CANARY_ROLLED_BACK;
        });
  });
}

}  // namespace payhost::host
