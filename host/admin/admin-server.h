// The `Admin` interface served on the admin unix socket to `payhostctl`, and the listener that
// admits each connection by its peer's credentials (SO_PEERCRED) and gives it an `AdminServer`
// that knows who it serves.
//
// Who may connect: the socket file's mode decides first (0600, or 0660 with `[admin] group`);
// the listener then admits only the daemon's own user, root, or (with a group) a member of that
// group, and records every refusal in the audit log. Deploys and rollbacks are recorded with the
// peer as actor; read-only queries (list, status, history) are not recorded (monitoring polls
// them; they change nothing).
//
// Control thread only.

#pragma once

#include "host/admin/audit-log.h"
#include "host/registry/registry.h"
#include "host/supervisor/deployer.h"

#include <payhost/host.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/function.h>

#include <sys/types.h>

namespace payhost::host {

class AdminServer final : public schema::Admin::Server {
public:
  // Everything borrowed outlives the server; `fillStatus` writes the host-wide figures.
  // `actor` names the peer in the audit log ("uid=0 pid=42").
  AdminServer(const Registry& registry, Deployer& deployer, const AuditLog& audit,
              kj::Function<void(schema::HostStatus::Builder)> fillStatus, kj::String actor)
      : registry(registry),
        deployer(deployer),
        audit(audit),
        fillStatus(kj::mv(fillStatus)),
        actor(kj::mv(actor)) {}

protected:
  kj::Promise<void> list(ListContext context) override;
  kj::Promise<void> status(StatusContext context) override;
  kj::Promise<void> deploy(DeployContext context) override;
  kj::Promise<void> rollback(RollbackContext context) override;
  kj::Promise<void> history(HistoryContext context) override;

private:
  const Registry& registry;
  Deployer& deployer;
  const AuditLog& audit;
  kj::Function<void(schema::HostStatus::Builder)> fillStatus;
  kj::String actor;
};

// A connected peer's credentials, from SO_PEERCRED.
struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};
kj::Maybe<PeerCredentials> peerCredentials(int fd);

// Sets the admin socket's owner group and mode: 0600 without a group, else the group and 0660.
// Returns the group's id (or -1 without one). Throws naming the group when it does not exist.
gid_t secureAdminSocket(kj::StringPtr path, kj::StringPtr group);

class AdminListener {
public:
  // `makeServer(actor)` makes the Admin capability for one admitted connection. `adminGid` is
  // the configured group's id, or -1. Everything borrowed outlives the listener.
  AdminListener(kj::ConnectionReceiver& receiver, AuditLog& audit, gid_t adminGid,
                kj::Function<kj::Own<AdminServer>(kj::String actor)> makeServer);
  KJ_DISALLOW_COPY(AdminListener);

  // Accepts until destroyed.
  kj::Promise<void> run();

private:
  struct Connection;
  class ErrorHandler final : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& exception) override {}
  };

  bool admitted(const PeerCredentials& peer) const;

  kj::ConnectionReceiver& receiver;
  AuditLog& audit;
  gid_t adminGid;
  kj::Function<kj::Own<AdminServer>(kj::String actor)> makeServer;
  ErrorHandler errors;
  kj::TaskSet connections{errors};
};

}  // namespace payhost::host
