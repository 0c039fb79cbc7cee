// What the host lends a plugin instance: logging, its config, a clock, and other services.
//
// The host creates one `Context` per plugin instance (one instance per shard) and passes it to
// the instance's constructor. The context, and everything its methods return by reference,
// outlives the instance. Call it only from the instance's shard (its event loop thread).
//
// Plugins must not start threads, timers or detached tasks of their own, nor keep static or
// thread_local objects with destructors: what the host lends through the context it can cancel
// when the plugin's version is unloaded; anything else could outlive the plugin's library.

#ifndef PAYHOST_CONTEXT_H_
#define PAYHOST_CONTEXT_H_

#include <payhost/config.h>
#include <payhost/keys.h>
#include <payhost/log.h>
#include <payhost/sql.h>

#include <capnp/any.h>
#include <capnp/capability.h>
#include <kj/async.h>
#include <kj/debug.h>
#include <kj/function.h>
#include <kj/time.h>
#include <kj/timer.h>

#include <cstdint>
#include <type_traits>

namespace payhost {

// Time for a plugin. Shard-local.
class Clock {
public:
  virtual ~Clock() noexcept(false) = default;

  // Wall-clock time, for timestamps and expiry dates.
  virtual kj::Date now() = 0;

  // The shard's timer, for delays and timeouts (`timer().afterDelay(50 * kj::MILLISECONDS)`).
  // Promises from it are cancelled with the plugin's version.
  virtual kj::Timer& timer() = 0;
};

class Context {
public:
  virtual ~Context() noexcept(false) = default;

  // The plugin's name and version as declared in `PAYHOST_PLUGIN`.
  virtual kj::StringPtr pluginName() = 0;
  virtual kj::StringPtr pluginVersion() = 0;

  // The shard this instance runs on, from 0 to shardCount() - 1.
  virtual uint32_t shardIndex() = 0;
  virtual uint32_t shardCount() = 0;

  // Records go to the host's log, tagged with the plugin, version and shard.
  virtual Logger& log() = 0;

  // The plugin's own config table.
  virtual const Config& config() = 0;

  virtual Clock& clock() = 0;

  // A capability to the service `name`: provided by another plugin of this host, or by another
  // host when the host's operator maps `name` to one (the host's config; the plugin's code is the
  // same either way). Local calls are routed to whatever version serves `name` when each call is
  // made. Remote calls travel over connections the host pools and reuses, and carry the remote's
  // name in their errors. Calls fail with `DISCONNECTED` if the service is not (or no longer)
  // available or its host cannot be reached (at once, without waiting, while the host is known
  // to be down), and with `OVERLOADED` when a remote host does not answer within the host's call
  // timeout. Keep the capability and reuse it: looking it up is cheap, but a reused capability
  // keeps working across the remote's restarts and this service's redeploys.
  virtual capnp::Capability::Client serviceCapability(kj::StringPtr name) = 0;

  // Typed form of `serviceCapability`: `ctx.service<schema::FraudScreen>("payments.fraud")`.
  template <typename Interface>
  typename Interface::Client service(kj::StringPtr name) {
    return serviceCapability(name).castAs<Interface>();
  }

  // Runs `work` on the host's worker pool, off the event loop (for blocking or CPU-heavy work),
  // and resolves on this shard with what it returns, or rejects with what it throws. While it
  // runs it holds one lease of the plugin's worker quota; when the quota is used up it waits up
  // to the configured time, then fails with OVERLOADED naming the plugin and the pool. `work`
  // runs on another thread: it must not touch this shard's objects, and what it captures must
  // stay valid until the promise settles (move it in).
  template <typename Func>
  kj::Promise<std::invoke_result_t<Func&>> offload(Func&& work);

  // The key named `name` in the host's config, if this plugin was granted it (`keys = [...]` in
  // its [[plugin]] entry); throws FAILED naming the key otherwise. The handle outlives the
  // plugin instance.
  virtual KeyHandle& keys(kj::StringPtr name) = 0;

  // The database pool `name` in the host's config (`[databases.NAME]`), if this plugin was granted
  // it (`databases = [...]` in its [[plugin]] entry); throws FAILED naming the database otherwise.
  // The database outlives the plugin instance; see <payhost/sql.h> for transactions and threads.
  virtual Database& sql(kj::StringPtr name) = 0;

  // What `offload` is built on: runs `work` on the worker pool, resolving on this shard.
  virtual kj::Promise<void> offloadWork(kj::Function<void()> work) = 0;

  // Who made `call`, one of this plugin's calls in progress:
  //   - over TLS, the subject common name (CN) of the client's certificate, which payhostd
  //     verified against its configured client CA;
  //   - over a listener configured `insecure = true`, that listener's `identity` (default
  //     "anonymous");
  //   - "plugin:NAME" when another plugin in this host called through `Context::service`;
  //   - "host" for calls the host makes itself.
  // By the time a call reaches the plugin, payhostd's `[[access]]` rules have already allowed
  // this identity to call this method of this service; use it for finer decisions (e.g. which
  // merchant's data a call may see) and for audit records.
  //
  // Per call, not per plugin: concurrent calls from different clients each get their own. Call
  // it while `call`'s parameters are held, that is before `call.releaseParams()`; the identity is
  // found from where the parameters are. Returns an empty string for a call that is not in
  // progress, or whose parameters were null. The returned string is valid until the call
  // completes; copy it (`kj::str(...)`) to keep it longer.
  template <typename Params, typename Results>
  kj::StringPtr caller(capnp::CallContext<Params, Results>& call) {
    return callerOf(capnp::AnyStruct::Reader(call.getParams()).getDataSection().begin());
  }

  // What `caller` is built on: the identity of the call whose parameter struct begins at
  // `paramsLocation`.
  virtual kj::StringPtr callerOf(const void* paramsLocation) = 0;
};

template <typename Func>
kj::Promise<std::invoke_result_t<Func&>> Context::offload(Func&& work) {
  using Result = std::invoke_result_t<Func&>;
  if constexpr (std::is_void_v<Result>) {
    // A copy (or move), never a reference: kj::Function made from an lvalue would only refer to
    // it, and the worker may run `work` after the caller's object is gone.
    return offloadWork(std::decay_t<Func>(kj::fwd<Func>(work)));
  } else {
    // Written on the worker thread, read here after the promise resolves. Shared, because a
    // caller that cancels the promise must not free it under a worker still running `work`.
    auto slot = kj::atomicRefcounted<_::ResultSlot<Result>>();
    return offloadWork([held = kj::atomicAddRef(*slot), work = kj::fwd<Func>(work)]() mutable {
             held->value = work();
           })
        .then([slot = kj::mv(slot)]() mutable { return kj::mv(KJ_ASSERT_NONNULL(slot->value)); });
  }
}

}  // namespace payhost

#endif  // PAYHOST_CONTEXT_H_
