// Outbound services: `Context::service(name)` for a name that a `[remotes.NAME]` table maps to
// another payhostd. Each shard keeps its own small pool of Cap'n Proto connections to each
// remote's Gateway, opened on the first call, reused by every call and every plugin on that
// shard, and reopened with backoff when the peer goes away.
//
// `Outbound` is the host-wide part: the remotes from the config and their counters (thread-safe,
// read by /metrics); it outlives every shard. `ShardOutbound` is one shard's connections and the
// capabilities plugins call through (shard-local: create, use and destroy on the shard's thread).
//
// What a call through a remote capability does: takes a connected connection of its shard
// (waiting for one that is connecting), obtains the service from the remote's Gateway
// (`getService`, cached per connection, resolved again after a reconnect), and forwards the call.
// It fails, with the remote's name and address in the message:
//   - DISCONNECTED at once while no connection is up and the next attempt is still in backoff,
//     and when the connection is lost during the call;
//   - OVERLOADED at once beyond `max_calls_in_flight` calls on the shard, and when no answer came
//     within `call_timeout_ms` (the call is cancelled on the remote).
//
// Per-plugin quotas (`[plugin.quota] remote_calls_reserve / remote_calls_limit`) apply per remote
// and per shard: a plugin never has more than its limit of calls in flight to one remote, and
// its reservation of each remote's `max_calls_in_flight` stays free for it however many calls
// other plugins make. A call refused by a quota fails OVERLOADED naming the plugin and the remote.

#pragma once

#include "host/config/daemon-config.h"
#include "host/log/logger.h"
#include "host/outbound/remote-connect.h"

#include <capnp/capability.h>
#include <kj/async-io.h>
#include <kj/mutex.h>
#include <kj/refcount.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <string>

namespace payhost::host {

// Counters of one remote, summed over shards. Thread-safe (relaxed atomics).
struct RemoteStats {
  std::atomic<int64_t> connectionsOpen{0};
  // Connections established, and those of them that replaced a lost or failed one.
  std::atomic<uint64_t> connects{0};
  std::atomic<uint64_t> reconnects{0};
  std::atomic<uint64_t> connectFailures{0};
  // Connections that were up and went away (peer closed, reset, ...).
  std::atomic<uint64_t> connectionsLost{0};
  std::atomic<uint64_t> calls{0};
  std::atomic<int64_t> callsInFlight{0};
  // Failed calls, all of them, and by cause.
  std::atomic<uint64_t> failures{0};
  std::atomic<uint64_t> failedDisconnected{0};
  std::atomic<uint64_t> failedOverloaded{0};
  std::atomic<uint64_t> failedTimeout{0};
};

// Thread-safe: immutable after construction, apart from the counters.
class Outbound {
public:
  // `remotes` (from the config) outlives this object. Throws when a remote's TLS files cannot be
  // used (see `RemoteTlsClient`).
  explicit Outbound(kj::ArrayPtr<const RemoteEntry> remotes);
  KJ_DISALLOW_COPY(Outbound);

  struct Remote {
    // Reads the remote's TLS files, if it has `tls`; throws naming the remote and the file.
    explicit Remote(const RemoteEntry& config);
    const RemoteEntry& config;
    // Null for an `insecure` (plaintext) remote.
    kj::Maybe<kj::Own<const RemoteTlsClient>> tls;
    RemoteStats stats;
  };

  kj::ArrayPtr<kj::Own<Remote>> remotes() { return remotes_; }
  kj::ArrayPtr<const kj::Own<Remote>> remotes() const { return remotes_; }

  struct Quota {
    uint32_t reserve = 0;
    // 0: no limit beyond the remote's max_calls_in_flight.
    uint32_t limit = 0;
  };
  // Sets `plugin`'s quota of calls in flight to each remote, per shard. Throws when the
  // reservations of all plugins would exceed a remote's `max_calls_in_flight`.
  void setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit);
  Quota quota(kj::StringPtr plugin) const;
  // The sum of every plugin's reservation.
  uint32_t reserved() const { return reserved_.load(std::memory_order_relaxed); }

private:
  kj::Array<kj::Own<Remote>> remotes_;
  kj::MutexGuarded<std::map<std::string, Quota>> quotas;
  std::atomic<uint32_t> reserved_{0};
};

class RemoteChannel;

// Shard-local.
class ShardOutbound {
public:
  // `outbound`, `log` and `io` outlive this object.
  ShardOutbound(Outbound& outbound, uint32_t shardIndex, LogSink& log, kj::AsyncIoProvider& io);
  ~ShardOutbound() noexcept(false);
  KJ_DISALLOW_COPY(ShardOutbound);

  // A capability to `service` on its remote for the plugin named `plugin` (whose quota its calls
  // count against), or null when no remote serves it. Nothing connects until the first call. The
  // capability stays valid after this object is gone (its calls then fail DISCONNECTED).
  kj::Maybe<capnp::Capability::Client> tryRoute(kj::StringPtr service, kj::StringPtr plugin);

  // Closes every connection; later calls fail DISCONNECTED ("payhostd is shutting down").
  void close();

private:
  Outbound& outbound;
  kj::Array<kj::Own<RemoteChannel>> channels;
};

}  // namespace payhost::host
