#include "host/admin/admin-server.h"

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
