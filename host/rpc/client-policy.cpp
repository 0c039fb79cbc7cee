#include "host/rpc/client-policy.h"

#include <kj/exception.h>

namespace payhost::host {

namespace {

bool listed(const kj::Vector<kj::String>& names, kj::StringPtr name) {
  for (auto& entry : names) {
    if (entry == "*" || entry == name) return true;
  }
  return false;
}

}  // namespace

bool AccessPolicy::mayUseService(kj::StringPtr identity, kj::StringPtr service) const {
  for (auto& rule : rules) {
    if (rule.identity == identity && listed(rule.services, service)) return true;
  }
  return false;
}

bool AccessPolicy::mayCall(kj::StringPtr identity, kj::StringPtr service,
                           kj::StringPtr method) const {
  for (auto& rule : rules) {
    if (rule.identity != identity || !listed(rule.services, service)) continue;
    if (rule.methods.empty() || listed(rule.methods, method)) return true;
  }
  return false;
}

void auditSecurityEvent(const ClientPolicy& policy, kj::StringPtr action, kj::StringPtr actor,
                        kj::StringPtr reason, kj::StringPtr detail) {
  if (policy.audit == nullptr) return;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                      [&]() { policy.audit->record(action, actor, "refused", reason, detail); })) {
    auto description = e->getDescription();
    LogField fields[] = {{"action", action}, {"error", description}};
    policy.log.write(LogLevel::ERROR, "audit.write_failed", nullptr, fields);
  }
}

}  // namespace payhost::host
