#include "host/admin/admin-server.h"

#include "host/util/errors.h"

#include <kj/debug.h>

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vector>

namespace payhost::host {

kj::Promise<void> AdminServer::list(ListContext context) {
  registry.fill(context.getResults().initPlugins(registry.plugins().size()));
  return kj::READY_NOW;
}

kj::Promise<void> AdminServer::status(StatusContext context) {
  fillStatus(context.getResults().initStatus());
  return kj::READY_NOW;
}

}  // namespace payhost::host

namespace payhost::host {

kj::Promise<void> AdminServer::deploy(DeployContext context) {
  auto request = context.getParams().getRequest();
  DeployOptions options;
  options.path = kj::heapString(request.getPath());
  options.configToml = kj::heapString(request.getConfig());
  KJ_REQUIRE(request.getCanaryPercent() < 100, "canary share must be 0 to 99 percent");
  options.canaryPercent = request.getCanaryPercent();
  if (request.getDrainTimeoutMs() > 0) {
    options.drainTimeout = request.getDrainTimeoutMs() * kj::MILLISECONDS;
  }
  options.force = request.getForce();
  options.actor = kj::heapString(actor);
  return deployer.deploy(kj::mv(options)).then([context](DeployResult&& result) mutable {
    result.fill(context.getResults().initReport());
  });
}

kj::Promise<void> AdminServer::rollback(RollbackContext context) {
  return deployer.rollback(context.getParams().getService(), actor)
      .then([context](DeployResult&& result) mutable {
        result.fill(context.getResults().initReport());
      });
}

kj::Promise<void> AdminServer::history(HistoryContext context) {
  size_t limit = context.getParams().getLimit();
  size_t count = limit == 0 || limit > audit.size() ? audit.size() : limit;
  auto entries = context.getResults().initEntries(count);
  for (size_t i = 0; i < count; ++i) {
    entries.setWithCaveats(i, audit[audit.size() - count + i]);
  }
  return kj::READY_NOW;
}

}  // namespace payhost::host

namespace payhost::host {

kj::Maybe<PeerCredentials> peerCredentials(int fd) {
  struct ucred credentials;
  socklen_t size = sizeof(credentials);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &size) != 0) return nullptr;
  return PeerCredentials{credentials.pid, credentials.uid, credentials.gid};
}

gid_t secureAdminSocket(kj::StringPtr path, kj::StringPtr group) {
  if (group.size() == 0) {
    KJ_SYSCALL(chmod(path.cStr(), 0600), path);
    return static_cast<gid_t>(-1);
  }
  struct group entry;
  struct group* found = nullptr;
  std::vector<char> buffer(16384);
  int error = getgrnam_r(group.cStr(), &entry, buffer.data(), buffer.size(), &found);
  if (error != 0 || found == nullptr) {
    PAYHOST_FAIL(FAILED, "admin.group: no group named '", group, "' on this machine");
  }
  KJ_SYSCALL(chown(path.cStr(), static_cast<uid_t>(-1), entry.gr_gid), path, group);
  KJ_SYSCALL(chmod(path.cStr(), 0660), path);
  return entry.gr_gid;
}

struct AdminListener::Connection {
  Connection(kj::Own<kj::AsyncIoStream> streamParam, kj::Own<AdminServer> server)
      : stream(kj::mv(streamParam)),
        network(*stream, capnp::rpc::twoparty::Side::SERVER),
        rpc(capnp::makeRpcServer(network, capnp::Capability::Client(kj::mv(server)))) {}

  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
};

AdminListener::AdminListener(kj::ConnectionReceiver& receiver, AuditLog& audit, gid_t adminGid,
                             kj::Function<kj::Own<AdminServer>(kj::String actor)> makeServer)
    : receiver(receiver), audit(audit), adminGid(adminGid), makeServer(kj::mv(makeServer)) {}

bool AdminListener::admitted(const PeerCredentials& peer) const {
  if (peer.uid == 0 || peer.uid == geteuid()) return true;
  if (adminGid == static_cast<gid_t>(-1)) return false;
  if (peer.gid == adminGid) return true;
  // A member through a supplementary group: the socket's mode admits it, and so do we.
  struct passwd entry;
  struct passwd* found = nullptr;
  std::vector<char> buffer(16384);
  if (getpwuid_r(peer.uid, &entry, buffer.data(), buffer.size(), &found) != 0 || found == nullptr) {
    return false;
  }
  int count = 64;
  std::vector<gid_t> groups(count);
  if (getgrouplist(entry.pw_name, peer.gid, groups.data(), &count) < 0) {
    groups.resize(count);
    if (getgrouplist(entry.pw_name, peer.gid, groups.data(), &count) < 0) return false;
  }
  for (int i = 0; i < count; ++i) {
    if (groups[i] == adminGid) return true;
  }
  return false;
}

kj::Promise<void> AdminListener::run() {
  return receiver.accept().then([this](kj::Own<kj::AsyncIoStream>&& stream) {
    kj::Maybe<PeerCredentials> peer;
    KJ_IF_MAYBE (fd, stream->getFd()) {
      peer = peerCredentials(*fd);
    }
    KJ_IF_MAYBE (p, peer) {
      auto actor = kj::str("uid=", p->uid, " pid=", p->pid);
      if (admitted(*p)) {
        auto connection = kj::heap<Connection>(kj::mv(stream), makeServer(kj::mv(actor)));
        auto done = connection->network.onDisconnect();
        connections.add(done.attach(kj::mv(connection)));
      } else {
        audit.record("permission-denied", actor, "refused",
                     kj::str("admin socket: uid ", p->uid, " is not the daemon's user, root, or ",
                             "in the admin group"));
      }
    } else {
      audit.record("permission-denied", "unknown peer", "refused",
                   "admin socket: no peer credentials");
    }
    return run();
  });
}

}  // namespace payhost::host
