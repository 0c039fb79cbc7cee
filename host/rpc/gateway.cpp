#include "host/rpc/gateway.h"

#include "host/util/errors.h"

#include <kj/vector.h>

namespace payhost::host {

kj::Promise<void> GatewayServer::listServices(ListServicesContext context) {
  auto views = services.list();
  auto list = context.getResults().initServices(views.size());
  for (size_t i = 0; i < views.size(); ++i) {
    auto& view = views[i];
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
  if (!services.serves(name)) {
    kj::Vector<kj::StringPtr> known;
    auto views = services.list();
    for (auto& view : views)
      known.add(view.name);
    PAYHOST_FAIL(FAILED, "unknown service '", name, "'; this host serves: ",
                 known.empty() ? kj::str("nothing") : kj::strArray(known, ", "));
  }
  context.getResults().setService(services.route(name));
  return kj::READY_NOW;
}

}  // namespace payhost::host
