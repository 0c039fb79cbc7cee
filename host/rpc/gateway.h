// The `Gateway` bootstrap capability of one client connection: lists the services this shard
// serves that the connection's caller may use, and hands out routes to them by name. Every call
// through those routes is checked against `[[access]]` and the connection's limit on calls in
// flight (`ConnectionCaller`).
//
// Shard-local.

#pragma once

#include "host/registry/shard-services.h"
#include "host/rpc/client-policy.h"

#include <payhost/host.capnp.h>

#include <map>
#include <tuple>

namespace payhost::host {

// The caller behind one client connection: its verified identity and what it may do.
class ConnectionCaller final : public Caller {
public:
  // `policy` outlives the caller (it belongs to the daemon).
  ConnectionCaller(kj::String identity, const ClientPolicy& policy, kj::Timer& timer)
      : identity_(kj::mv(identity)), policy(policy), timer(timer), lastCall(timer.now()) {}

  kj::StringPtr identity() override { return identity_; }
  kj::Maybe<kj::Exception> callStarting(kj::StringPtr service, uint64_t interfaceId,
                                        uint16_t methodId) override;
  void callEnded() override;

  // Null when `identity` may use `service`; otherwise the refusal (logged and counted).
  kj::Maybe<kj::Exception> checkService(kj::StringPtr service);
  bool mayUseService(kj::StringPtr service) const {
    return policy.access.mayUseService(identity_, service);
  }

  uint32_t inFlight() const { return inFlight_; }
  // When the last call started or ended: the idle timeout counts from here.
  kj::TimePoint lastActivity() const { return lastCall; }

private:
  kj::Exception denied(kj::StringPtr service, kj::StringPtr method);

  kj::String identity_;
  const ClientPolicy& policy;
  kj::Timer& timer;
  uint32_t inFlight_ = 0;
  kj::TimePoint lastCall;
  // Decisions by (service name buffer, interface, method): a service's name buffer lives as long
  // as the shard's route entry for it, which outlives every connection.
  std::map<std::tuple<const char*, uint64_t, uint16_t>, bool> decisions;
};

class GatewayServer final : public schema::Gateway::Server {
public:
  // `services` outlives the gateway (both belong to the shard; the shard drops connections,
  // and with them gateways, first).
  GatewayServer(ShardServices& services, kj::Own<ConnectionCaller> caller)
      : services(services), caller(kj::mv(caller)) {}

protected:
  kj::Promise<void> listServices(ListServicesContext context) override;
  kj::Promise<void> getService(GetServiceContext context) override;

private:
  ShardServices& services;
  kj::Own<ConnectionCaller> caller;
};

}  // namespace payhost::host
