// What payhostd exports on /metrics about its connections to remote hosts ([remotes.NAME]):
// per remote, connections open, connects and reconnects, connect failures, lost connections,
// calls, calls in flight and failed calls by cause. A separate exposition appended to the host's,
// with its own families (`payhost_remote_*`).
//
// Control thread only; reads relaxed atomics, never stops a shard.

#pragma once

#include "host/outbound/outbound.h"

#include <kj/string.h>

namespace payhost::host {

kj::String renderOutboundMetrics(const Outbound& outbound);

}  // namespace payhost::host
