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
  return deployer.deploy(kj::mv(options)).then([context](DeployResult&& result) mutable {
    result.fill(context.getResults().initReport());
  });
}

kj::Promise<void> AdminServer::rollback(RollbackContext context) {
  return deployer.rollback(context.getParams().getService())
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
