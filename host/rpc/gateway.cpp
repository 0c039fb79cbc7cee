#include "host/rpc/gateway.h"

#include "host/metrics/host-metrics.h"
#include "host/util/errors.h"

#include <kj/vector.h>

namespace payhost::host {

kj::Exception ConnectionCaller::denied(kj::StringPtr service, kj::StringPtr method) {
  policy.counters.accessDenied.fetch_add(1, std::memory_order_relaxed);
  auto what = method.size() == 0 ? kj::str("service '", service, "'")
                                 : kj::str("method '", method, "' of service '", service, "'");
  LogField fields[] = {{"identity", identity_}, {"service", service}, {"method", method}};
  policy.log.write(LogLevel::WARNING, "access.denied", nullptr, fields);
  // Throttled per identity and service (see SecurityAudit); the method is in the detail only.
  auditSecurityEvent(policy, "permission-denied", identity_, service,
                     kj::str(what, " (no [[access]] rule grants it)"));
  return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__,
                       kj::str("permission denied: identity '", identity_, "' may not call ", what,
                               " (no [[access]] rule grants it)"));
}

kj::Maybe<kj::Exception> ConnectionCaller::checkService(kj::StringPtr service) {
  if (mayUseService(service)) return nullptr;
  return denied(service, "");
}

kj::Maybe<kj::Exception> ConnectionCaller::callStarting(kj::StringPtr service, uint64_t interfaceId,
                                                        uint16_t methodId) {
  auto key = std::make_tuple(service.begin(), interfaceId, methodId);
  auto it = decisions.find(key);
  if (it == decisions.end()) {
    auto method = methodLabel(interfaceId, methodId);
    it = decisions.emplace(key, policy.access.mayCall(identity_, service, method)).first;
  }
  if (!it->second) return denied(service, methodLabel(interfaceId, methodId));
  if (inFlight_ >= policy.limits.maxCallsPerConnection) {
    policy.counters.callsOverLimit.fetch_add(1, std::memory_order_relaxed);
    return kj::Exception(kj::Exception::Type::OVERLOADED, __FILE__, __LINE__,
                         kj::str("this connection has ", inFlight_,
                                 " calls in flight, the most payhostd allows "
                                 "(limits.max_calls_per_connection); wait for answers"));
  }
  ++inFlight_;
  lastCall = timer.now();
  return nullptr;
}

void ConnectionCaller::callEnded() {
  --inFlight_;
  lastCall = timer.now();
}

kj::Promise<void> GatewayServer::listServices(ListServicesContext context) {
  auto views = services.list();
  kj::Vector<ShardServices::ServiceView*> visible;
  for (auto& view : views) {
    if (caller->mayUseService(view.name)) visible.add(&view);
  }
  auto list = context.getResults().initServices(visible.size());
  for (size_t i = 0; i < visible.size(); ++i) {
    auto& view = *visible[i];
    auto info = list[i];
    info.setName(view.name);
    info.setInterfaceName(view.declaration.interfaceName);
    info.setInterfaceId(view.declaration.interfaceId);
    info.setPlugin(view.generation.name());
    info.setVersion(view.generation.version());
  }
  return kj::READY_NOW;
}

kj::Promise<void> GatewayServer::getService(GetServiceContext context) {
  auto name = context.getParams().getName();
  // Checked first, so a caller learns nothing about services it may not use.
  KJ_IF_MAYBE (refused, caller->checkService(name)) {
    return kj::mv(*refused);
  }
  if (!services.serves(name)) {
    kj::Vector<kj::StringPtr> known;
    auto views = services.list();
    for (auto& view : views) {
      if (caller->mayUseService(view.name)) known.add(view.name);
    }
    PAYHOST_FAIL(FAILED, "unknown service '", name, "'; this host serves: ",
                 known.empty() ? kj::str("nothing") : kj::strArray(known, ", "));
  }
  context.getResults().setService(services.route(name, kj::addRef(*caller)));
  return kj::READY_NOW;
}

}  // namespace payhost::host
