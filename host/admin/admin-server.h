// The `Admin` interface served on the admin unix socket to `payhostctl`.
//
// Control thread only.

#pragma once

#include "host/registry/registry.h"

#include <payhost/host.capnp.h>

#include <kj/function.h>

namespace payhost::host {

class AdminServer final : public schema::Admin::Server {
public:
  // `registry` outlives the server; `fillStatus` writes the host-wide figures.
  AdminServer(const Registry& registry, kj::Function<void(schema::HostStatus::Builder)> fillStatus)
      : registry(registry), fillStatus(kj::mv(fillStatus)) {}

protected:
  kj::Promise<void> list(ListContext context) override;
  kj::Promise<void> status(StatusContext context) override;

private:
  const Registry& registry;
  kj::Function<void(schema::HostStatus::Builder)> fillStatus;
};

}  // namespace payhost::host
