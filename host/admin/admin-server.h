// The `Admin` interface served on the admin unix socket to `payhostctl`.
//
// Control thread only.

#pragma once

#include "host/admin/audit-log.h"
#include "host/registry/registry.h"
#include "host/supervisor/deployer.h"

#include <payhost/host.capnp.h>

#include <kj/function.h>

namespace payhost::host {

class AdminServer final : public schema::Admin::Server {
public:
  // Everything borrowed outlives the server; `fillStatus` writes the host-wide figures.
  AdminServer(const Registry& registry, Deployer& deployer, const AuditLog& audit,
              kj::Function<void(schema::HostStatus::Builder)> fillStatus)
      : registry(registry), deployer(deployer), audit(audit), fillStatus(kj::mv(fillStatus)) {}

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
};

}  // namespace payhost::host
