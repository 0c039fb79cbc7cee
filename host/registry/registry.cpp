#include "host/registry/registry.h"

#include "host/util/errors.h"

namespace payhost::host {

void Registry::addRemoteService(kj::StringPtr service, kj::StringPtr remote) {
  remoteServices.add(RemoteService{kj::heapString(service), kj::heapString(remote)});
}

void Registry::checkServicesFree(const Generation& generation,
                                 kj::Maybe<const Generation&> replacing) const {
  for (auto& remote : remoteServices) {
    for (auto& ours : generation.services()) {
      if (remote.service == ours.name) {
        PAYHOST_FAIL(FAILED, generation.library().path(), ": service '", ours.name, "' of plugin ",
                     generation.name(), " ", generation.version(), " is mapped to remote host '",
                     remote.remote, "' by [remotes.", remote.remote,
                     "] services in the config; a service is either local or remote");
      }
    }
  }
  for (auto& record : records) {
    KJ_IF_MAYBE (other, record.generation) {
      KJ_IF_MAYBE (old, replacing) {
        if (other->get() == old) continue;
      }
      for (auto& theirs : (*other)->services()) {
        for (auto& ours : generation.services()) {
          if (theirs.name == ours.name) {
            PAYHOST_FAIL(FAILED, generation.library().path(), ": service '", ours.name,
                         "' of plugin ", generation.name(), " ", generation.version(),
                         " is already provided by plugin ", (*other)->name(), " ",
                         (*other)->version(), " (", record.path, ")");
          }
        }
      }
    }
  }
}

PluginRecord& Registry::addServing(kj::StringPtr path, kj::Own<Generation> generation) {
  return records.add(PluginRecord{
      kj::heapString(path), schema::PluginState::SERVING, kj::mv(generation), kj::String(), {}});
}

kj::Maybe<PluginRecord&> Registry::findPlugin(kj::StringPtr name) {
  for (auto& record : records) {
    KJ_IF_MAYBE (generation, record.generation) {
      if ((*generation)->name() == name) return record;
    }
  }
  return nullptr;
}

kj::Maybe<PluginRecord&> Registry::findService(kj::StringPtr service) {
  for (auto& record : records) {
    KJ_IF_MAYBE (generation, record.generation) {
      for (auto& declared : (*generation)->services()) {
        if (declared.name == service) return record;
      }
    }
  }
  return nullptr;
}

void Registry::addFailed(kj::StringPtr path, kj::String error) {
  records.add(
      PluginRecord{kj::heapString(path), schema::PluginState::FAILED, nullptr, kj::mv(error), {}});
}

uint32_t Registry::count(schema::PluginState state) const {
  uint32_t n = 0;
  for (auto& record : records)
    n += record.state == state;
  return n;
}

void Registry::retiring(const Generation& generation) {
  for (auto& version : retired_) {
    if (version.generation == generation.id()) return;
  }
  retired_.add(RetiredVersion{kj::heapString(generation.name()),
                              kj::heapString(generation.version()), generation.id(), false});
}

void Registry::retired(const Generation& generation, bool parked) {
  kj::Vector<RetiredVersion> kept;
  for (auto& version : retired_) {
    if (version.generation != generation.id()) {
      kept.add(kj::mv(version));
    } else if (parked) {
      version.parked = true;
      kept.add(kj::mv(version));
    }
  }
  retired_ = kj::mv(kept);
}

void Registry::fill(capnp::List<schema::PluginInfo>::Builder list) const {
  for (size_t i = 0; i < records.size(); ++i) {
    auto& record = records[i];
    auto info = list[i];
    info.setPath(record.path);
    info.setState(record.state);
    if (record.error.size() > 0) info.setError(record.error);
    KJ_IF_MAYBE (generation, record.generation) {
      auto& g = **generation;
      info.setName(g.name());
      info.setVersion(g.version());
      info.setSha256(g.library().sha256());
      info.setGeneration(g.id());
      info.setLoadedAtUnixMs(g.loadedAtUnixMs());
      auto services = info.initServices(g.services().size());
      for (size_t j = 0; j < services.size(); ++j)
        services.set(j, g.services()[j].name);
      info.setCallsTotal(g.callsTotal.load(std::memory_order_relaxed));
      info.setCallsFailed(g.callsFailed.load(std::memory_order_relaxed));
      info.setCallsInFlight(g.callsInFlight.load(std::memory_order_relaxed));
    }
  }
}

}  // namespace payhost::host
