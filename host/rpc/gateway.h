// The `Gateway` bootstrap capability of one shard: lists the services this shard serves and
// hands out routes to them by name.
//
// Shard-local.

#pragma once

#include "host/registry/shard-services.h"

#include <payhost/host.capnp.h>

namespace payhost::host {

class GatewayServer final : public schema::Gateway::Server {
public:
  // `services` outlives the gateway (both belong to the shard; the shard drops connections,
  // and with them gateways, first).
  explicit GatewayServer(ShardServices& services) : services(services) {}

protected:
  kj::Promise<void> listServices(ListServicesContext context) override;
  kj::Promise<void> getService(GetServiceContext context) override;

private:
  ShardServices& services;
};

}  // namespace payhost::host
