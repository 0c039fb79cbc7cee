// The host's list of plugins: each configured plugin file with the generation loaded from it,
// or the reason it was refused, and which generation provides each service name.
//
// There is one Registry, built by `Daemon`; nothing registers itself.
//
// Control thread only.

#pragma once

#include "host/loader/generation.h"

#include <payhost/host.capnp.h>

#include <kj/string.h>
#include <kj/vector.h>

#include <cstdint>

namespace payhost::host {

struct PluginRecord {
  kj::String path;
  schema::PluginState state = schema::PluginState::LOADING;
  kj::Maybe<kj::Own<Generation>> generation;
  kj::String error;
  // Copies of the packages that served this plugin, oldest first; the last is the current one.
  // Rollback deploys the one before it.
  kj::Vector<kj::String> packages;
};

// A version that no longer serves but is not gone: draining (replaced, calls in flight finishing)
// or parked (its library kept loaded at unload because its objects or offloaded work lived on).
struct RetiredVersion {
  kj::String plugin;
  kj::String version;
  uint64_t generation;
  bool parked;
};

class Registry {
public:
  // A fresh id for the next load (also names its memfd).
  uint64_t nextLoadId() { return ++lastLoadId; }

  // Records that `service` resolves to the remote host `remote` ([remotes.NAME] in the config):
  // no plugin of this host may then provide it.
  void addRemoteService(kj::StringPtr service, kj::StringPtr remote);

  // Throws, naming both plugins, when a service of `generation` is already provided by a plugin
  // other than `replacing`, and naming the remote when the config maps it to a remote host.
  void checkServicesFree(const Generation& generation,
                         kj::Maybe<const Generation&> replacing = nullptr) const;

  // The serving record of the plugin named `name`, or of the plugin providing `service`.
  kj::Maybe<PluginRecord&> findPlugin(kj::StringPtr name);
  kj::Maybe<PluginRecord&> findService(kj::StringPtr service);

  PluginRecord& addServing(kj::StringPtr path, kj::Own<Generation> generation);
  void addFailed(kj::StringPtr path, kj::String error);

  kj::ArrayPtr<PluginRecord> plugins() { return records.asPtr(); }
  kj::ArrayPtr<const PluginRecord> plugins() const { return records.asPtr(); }

  uint32_t count(schema::PluginState state) const;

  // A replaced (or rolled-back canary) version starts draining; when it is unloaded it leaves the
  // list, or stays as parked when its library could not be closed.
  void retiring(const Generation& generation);
  void retired(const Generation& generation, bool parked);
  kj::ArrayPtr<const RetiredVersion> retiredVersions() const { return retired_.asPtr(); }

  // Writes one PluginInfo per record.
  void fill(capnp::List<schema::PluginInfo>::Builder list) const;

private:
  uint64_t lastLoadId = 0;
  kj::Vector<PluginRecord> records;
  struct RemoteService {
    kj::String service;
    kj::String remote;
  };
  kj::Vector<RemoteService> remoteServices;
  kj::Vector<RetiredVersion> retired_;
};

}  // namespace payhost::host
