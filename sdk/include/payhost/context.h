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
#include <payhost/log.h>

#include <capnp/capability.h>
#include <kj/async.h>
#include <kj/time.h>
#include <kj/timer.h>

#include <cstdint>

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

  // A capability to the service `name` provided by another plugin. Calls on it fail with
  // `DISCONNECTED` if that service is not (or no longer) available; they are routed to whatever
  // version serves `name` when each call is made.
  virtual capnp::Capability::Client serviceCapability(kj::StringPtr name) = 0;

  // Typed form of `serviceCapability`: `ctx.service<schema::FraudScreen>("payments.fraud")`.
  template <typename Interface>
  typename Interface::Client service(kj::StringPtr name) {
    return serviceCapability(name).castAs<Interface>();
  }
};

}  // namespace payhost

#endif  // PAYHOST_CONTEXT_H_
