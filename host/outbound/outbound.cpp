#include "host/outbound/outbound.h"

#include "host/outbound/remote-connect.h"
#include "host/util/errors.h"

#include <payhost/host.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>

#include <map>
#include <string>

namespace payhost::host {

// One remote as seen from one shard: its connections and what each has resolved. Shard-local;
// refcounted so that capabilities held by plugins stay valid after the shard closes it.
class RemoteChannel final : public kj::Refcounted {
public:
  RemoteChannel(Outbound::Remote& remote, uint32_t shardIndex, LogSink& log,
                kj::AsyncIoProvider& io)
      : config(remote.config),
        tls(remote.tls.map([](auto& client) -> const RemoteTlsClient& { return *client; })),
        stats(remote.stats),
        shardIndex(kj::str(shardIndex)),
        log(log),
        network(io.getNetwork()),
        timer(io.getTimer()),
        slots(kj::heapArray<Slot>(config.connectionsPerShard)) {
    for (auto& slot : slots)
      slot.resolutions = kj::heap<kj::TaskSet>(ignoreErrors);
  }

  ~RemoteChannel() noexcept(false) override { close(); }

  const RemoteEntry& entry() const { return config; }
  RemoteStats& counters() { return stats; }
  kj::Timer& shardTimer() { return timer; }
  bool closed() const { return closed_; }
  uint32_t inFlight = 0;
  // Calls beyond their plugin's reservation, which share what no plugin reserved.
  uint32_t unreservedInFlight = 0;
  // Calls in flight per plugin.
  std::map<std::string, uint32_t> pluginInFlight;

  // The service `name` on a connected connection, once there is one.
  kj::Promise<capnp::Capability::Client> service(kj::StringPtr name);

  void close();

  // "remote fx-host (tcp:10.0.0.5:7400): " for error messages.
  kj::String prefix() const { return kj::str("remote ", config.name, " (", config.address, "): "); }

private:
  enum class State { IDLE, CONNECTING, CONNECTED, BACKOFF };

  struct Slot {
    State state = State::IDLE;
    kj::Promise<void> task = nullptr;
    kj::Own<kj::AsyncIoStream> stream;
    kj::Own<capnp::TwoPartyClient> client;
    kj::Maybe<schema::Gateway::Client> gateway;
    // Services resolved on this connection; an entry goes when its getService fails, and all go
    // with the connection.
    std::map<std::string, capnp::Capability::Client> services;
    kj::Own<kj::TaskSet> resolutions;
    // While CONNECTING: calls waiting for the connection.
    kj::Maybe<kj::ForkedPromise<void>> connected;
    kj::Own<kj::PromiseFulfiller<void>> connectedFulfiller;
    // Failed connects in a row (doubles the backoff); 0 once connected.
    uint32_t failures = 0;
    bool everConnected = false;
    bool lostSinceConnected = false;
    kj::String lastError;
    kj::TimePoint retryAt = kj::origin<kj::TimePoint>();
  };

  kj::Promise<void> run(Slot& slot);
  void connected(Slot& slot, kj::Own<kj::AsyncIoStream> stream);
  void lost(Slot& slot, kj::StringPtr reason);
  void teardown(Slot& slot);
  capnp::Capability::Client resolve(Slot& slot, kj::StringPtr name);
  void info(kj::StringPtr event, LogLevel level, std::initializer_list<LogField> extra);

  const RemoteEntry& config;
  kj::Maybe<const RemoteTlsClient&> tls;
  RemoteStats& stats;
  kj::String shardIndex;
  LogSink& log;
  kj::Network& network;
  kj::Timer& timer;
  // A failed getService is seen by the calls made on its answer; the task only drops the entry.
  class IgnoreErrors final : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&&) override {}
  };
  IgnoreErrors ignoreErrors;
  kj::Array<Slot> slots;
  uint32_t next = 0;
  bool closed_ = false;
};

void RemoteChannel::info(kj::StringPtr event, LogLevel level,
                         std::initializer_list<LogField> extra) {
  if (!log.enabled(level)) return;
  kj::Vector<LogField> fields;
  fields.add(LogField{"remote", config.name});
  fields.add(LogField{"address", config.address});
  fields.add(LogField{"shard", shardIndex});
  fields.addAll(extra.begin(), extra.end());
  log.write(level, event, nullptr, fields);
}

kj::Promise<capnp::Capability::Client> RemoteChannel::service(kj::StringPtr name) {
  if (closed_) {
    return kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                         kj::str("payhostd is shutting down"));
  }
  // Round robin over the connections that are up.
  for (size_t i = 0; i < slots.size(); ++i) {
    auto& slot = slots[(next + i) % slots.size()];
    if (slot.state == State::CONNECTED) {
      next = (next + i + 1) % slots.size();
      return resolve(slot, name);
    }
  }
  // None is up: open those never opened; wait for one that is connecting.
  for (auto& slot : slots) {
    if (slot.state == State::IDLE) slot.task = run(slot).eagerlyEvaluate(nullptr);
  }
  for (auto& slot : slots) {
    if (slot.state != State::CONNECTING) continue;
    KJ_IF_MAYBE (waiting, slot.connected) {
      return waiting->addBranch().then(
          [this, name = kj::heapString(name)]() { return service(name); });
    }
  }
  // Every connection is in backoff: fail now rather than queue behind a peer that is down.
  auto& first = slots[0];
  auto wait = first.retryAt - timer.now();
  for (auto& slot : slots) {
    if (slot.retryAt - timer.now() < wait) wait = slot.retryAt - timer.now();
  }
  return kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                       kj::str("not connected (", first.lastError, "); next connect attempt in ",
                               wait < 0 * kj::MILLISECONDS ? 0 : wait / kj::MILLISECONDS, " ms"));
}

capnp::Capability::Client RemoteChannel::resolve(Slot& slot, kj::StringPtr name) {
  auto key = std::string(name.cStr());
  auto found = slot.services.find(key);
  if (found != slot.services.end()) return found->second;
  auto& gateway = KJ_ASSERT_NONNULL(slot.gateway);
  auto request = gateway.getServiceRequest();
  request.setName(name);
  auto response = request.send();
  // Pipelined: calls go out at once, before the remote's answer to getService.
  capnp::Capability::Client capability = response.getService();
  slot.services.emplace(key, capability);
  // Resolved again by the next call when the remote did not have it (it may be deployed later).
  slot.resolutions->add(response.ignoreResult().catch_(
      [&slot, key = kj::mv(key)](kj::Exception&&) { slot.services.erase(key); }));
  return capability;
}

kj::Promise<void> RemoteChannel::run(Slot& slot) {
  slot.state = State::CONNECTING;
  auto paf = kj::newPromiseAndFulfiller<void>();
  slot.connected = paf.promise.fork();
  slot.connectedFulfiller = kj::mv(paf.fulfiller);
  return connectToRemote(network, timer, config, tls)
      .then([this, &slot](kj::Own<kj::AsyncIoStream> stream) {
        connected(slot, kj::mv(stream));
        return slot.client->onDisconnect();
      })
      .then([this, &slot]() { lost(slot, "the remote closed the connection"); },
            [this, &slot](kj::Exception&& e) { lost(slot, e.getDescription()); })
      .then([this, &slot]() {
        auto delay = config.backoffMin;
        for (uint32_t i = 1; i < slot.failures && delay < config.backoffMax; ++i)
          delay = delay * 2;
        if (delay > config.backoffMax) delay = config.backoffMax;
        slot.retryAt = timer.now() + delay;
        return timer.afterDelay(delay);
      })
      .then([this, &slot]() { return run(slot); });
}

void RemoteChannel::connected(Slot& slot, kj::Own<kj::AsyncIoStream> stream) {
  slot.stream = kj::mv(stream);
  slot.client = kj::heap<capnp::TwoPartyClient>(*slot.stream);
  slot.gateway = slot.client->bootstrap().castAs<schema::Gateway>();
  slot.state = State::CONNECTED;
  slot.failures = 0;
  stats.connectionsOpen.fetch_add(1, std::memory_order_relaxed);
  stats.connects.fetch_add(1, std::memory_order_relaxed);
  bool again = slot.everConnected || slot.lostSinceConnected;
  if (again) stats.reconnects.fetch_add(1, std::memory_order_relaxed);
  slot.everConnected = true;
  slot.connectedFulfiller->fulfill();
  slot.connected = nullptr;
  info(again ? "remote.reconnected" : "remote.connected", LogLevel::INFO, {});
}

void RemoteChannel::lost(Slot& slot, kj::StringPtr reason) {
  if (slot.state == State::CONNECTED) {
    stats.connectionsOpen.fetch_sub(1, std::memory_order_relaxed);
    stats.connectionsLost.fetch_add(1, std::memory_order_relaxed);
    info("remote.lost", LogLevel::WARNING, {{"error", reason}});
  } else {
    stats.connectFailures.fetch_add(1, std::memory_order_relaxed);
    // Said once per outage; the retries that follow are debug.
    info("remote.connect_failed", slot.failures == 0 ? LogLevel::WARNING : LogLevel::DEBUG,
         {{"error", reason}});
    slot.lostSinceConnected = true;
  }
  ++slot.failures;
  slot.lastError = kj::heapString(reason);
  if (slot.connectedFulfiller.get() != nullptr && slot.connectedFulfiller->isWaiting()) {
    slot.connectedFulfiller->reject(kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__,
                                                  __LINE__, kj::heapString(reason)));
  }
  slot.connected = nullptr;
  teardown(slot);
  slot.state = State::BACKOFF;
}

void RemoteChannel::teardown(Slot& slot) {
  slot.resolutions = kj::heap<kj::TaskSet>(ignoreErrors);
  slot.services.clear();
  slot.gateway = nullptr;
  slot.client = nullptr;
  slot.stream = nullptr;
}

void RemoteChannel::close() {
  if (closed_) return;
  closed_ = true;
  for (auto& slot : slots) {
    if (slot.state == State::CONNECTED) {
      stats.connectionsOpen.fetch_sub(1, std::memory_order_relaxed);
    }
    if (slot.connectedFulfiller.get() != nullptr && slot.connectedFulfiller->isWaiting()) {
      slot.connectedFulfiller->reject(
          KJ_EXCEPTION(DISCONNECTED, "payhostd is shutting down", config.name));
    }
    slot.connected = nullptr;
    slot.task = nullptr;
    teardown(slot);
    slot.state = State::BACKOFF;
  }
}

namespace {

// What a plugin holds for a remote service: forwards every call to the service on one of the
// shard's connections to its remote. Shard-local.
class RemoteRoute final : public capnp::Capability::Server {
public:
  RemoteRoute(kj::Own<RemoteChannel> channel, kj::StringPtr service, kj::StringPtr plugin,
              Outbound& outbound)
      : channel(kj::mv(channel)),
        service(kj::heapString(service)),
        plugin(kj::heapString(plugin)),
        pluginKey(plugin.cStr()),
        // Quotas are set before a plugin's instances are created, and kept across its versions.
        quota(outbound.quota(plugin)),
        outbound(outbound) {}

  DispatchCallResult dispatchCall(
      uint64_t interfaceId, uint16_t methodId,
      capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
    auto& stats = channel->counters();
    auto& config = channel->entry();
    stats.calls.fetch_add(1, std::memory_order_relaxed);
    auto& mine = channel->pluginInFlight[pluginKey];
    kj::Maybe<kj::String> refused;
    bool unreserved = mine >= quota.reserve;
    if (quota.limit > 0 && mine >= quota.limit) {
      refused = kj::str("plugin ", plugin, " has ", mine,
                        " calls in flight to this remote on this shard (remote_calls_limit ",
                        quota.limit, ")");
    } else if (unreserved && config.maxCallsInFlight > 0) {
      auto reserved = outbound.reserved();
      auto shared = config.maxCallsInFlight > reserved ? config.maxCallsInFlight - reserved : 0;
      if (channel->unreservedInFlight >= shared) {
        refused = kj::str(
            channel->inFlight, " calls in flight on this shard (max_calls_in_flight ",
            config.maxCallsInFlight,
            reserved > 0 ? kj::str(", ", reserved, " reserved by plugins") : kj::String(), ")");
      }
    }
    KJ_IF_MAYBE (reason, refused) {
      stats.failures.fetch_add(1, std::memory_order_relaxed);
      stats.failedOverloaded.fetch_add(1, std::memory_order_relaxed);
      return {kj::Exception(kj::Exception::Type::OVERLOADED, __FILE__, __LINE__,
                            kj::str(channel->prefix(), *reason)),
              false};
    }
    ++mine;
    if (unreserved) ++channel->unreservedInFlight;
    context.allowCancellation();
    ++channel->inFlight;
    stats.callsInFlight.fetch_add(1, std::memory_order_relaxed);
    // `mine` is a value in `pluginInFlight`, which never erases one.
    auto done = kj::defer([channel = kj::addRef(*channel), &mine, unreserved]() mutable {
      --mine;
      if (unreserved) --channel->unreservedInFlight;
      --channel->inFlight;
      channel->counters().callsInFlight.fetch_sub(1, std::memory_order_relaxed);
    });

    auto forwarded = channel->service(service).then([context, interfaceId, methodId](
                                                        capnp::Capability::Client target) mutable {
      auto params = context.getParams();
      auto request = target.typelessRequest(interfaceId, methodId, params.targetSize());
      request.set(params);
      context.releaseParams();
      return request.send().then([context](capnp::Response<capnp::AnyPointer>&& response) mutable {
        context.getResults(response.targetSize()).set(response);
      });
    });
    auto timeout = config.callTimeout;
    auto deadline = channel->shardTimer().afterDelay(timeout).then(
        [channel = kj::addRef(*channel), timeout]() mutable {
          auto& counters = channel->counters();
          counters.failures.fetch_add(1, std::memory_order_relaxed);
          counters.failedTimeout.fetch_add(1, std::memory_order_relaxed);
          return kj::Promise<void>(
              kj::Exception(kj::Exception::Type::OVERLOADED, __FILE__, __LINE__,
                            kj::str(channel->prefix(), "no answer within ",
                                    timeout / kj::MILLISECONDS, " ms (call_timeout_ms)")));
        });
    auto promise =
        forwarded
            .catch_([channel = kj::addRef(*channel)](kj::Exception&& e) mutable {
              auto& counters = channel->counters();
              counters.failures.fetch_add(1, std::memory_order_relaxed);
              auto type = e.getType();
              if (type == kj::Exception::Type::DISCONNECTED) {
                counters.failedDisconnected.fetch_add(1, std::memory_order_relaxed);
              } else if (type == kj::Exception::Type::OVERLOADED) {
                counters.failedOverloaded.fetch_add(1, std::memory_order_relaxed);
              }
              // Named, so a plugin's caller can tell which host failed.
              kj::throwFatalException(kj::Exception(
                  type, __FILE__, __LINE__, kj::str(channel->prefix(), e.getDescription())));
            })
            .exclusiveJoin(kj::mv(deadline))
            .attach(kj::mv(done));
    return {kj::mv(promise), false};
  }

private:
  kj::Own<RemoteChannel> channel;
  kj::String service;
  kj::String plugin;
  std::string pluginKey;
  Outbound::Quota quota;
  Outbound& outbound;
};

}  // namespace

Outbound::Remote::Remote(const RemoteEntry& config) : config(config) {
  if (config.tls != nullptr) tls = kj::heap<const RemoteTlsClient>(config);
}

Outbound::Outbound(kj::ArrayPtr<const RemoteEntry> remotes)
    : remotes_(KJ_MAP(entry, remotes) { return kj::heap<Remote>(entry); }) {}

void Outbound::setQuota(kj::StringPtr plugin, uint32_t reserve, uint32_t limit) {
  auto locked = quotas.lockExclusive();
  uint32_t total = reserve;
  for (auto& [name, quota] : *locked) {
    if (name != plugin.cStr()) total += quota.reserve;
  }
  for (auto& remote : remotes_) {
    auto max = remote->config.maxCallsInFlight;
    if (max > 0 && total > max) {
      PAYHOST_FAIL(FAILED, "plugin ", plugin, ": remote_calls_reserve ", reserve,
                   " brings the plugins' reservations to ", total, ", above max_calls_in_flight ",
                   max, " of [remotes.", remote->config.name, "]");
    }
  }
  (*locked)[std::string(plugin.cStr())] = Quota{reserve, limit};
  reserved_.store(total, std::memory_order_relaxed);
}

Outbound::Quota Outbound::quota(kj::StringPtr plugin) const {
  auto locked = quotas.lockShared();
  auto found = locked->find(std::string(plugin.cStr()));
  return found == locked->end() ? Quota{} : found->second;
}

ShardOutbound::ShardOutbound(Outbound& outbound, uint32_t shardIndex, LogSink& log,
                             kj::AsyncIoProvider& io)
    : outbound(outbound), channels(KJ_MAP(remote, outbound.remotes()) {
        return kj::refcounted<RemoteChannel>(*remote, shardIndex, log, io);
      }) {}

ShardOutbound::~ShardOutbound() noexcept(false) {
  close();
}

kj::Maybe<capnp::Capability::Client> ShardOutbound::tryRoute(kj::StringPtr service,
                                                             kj::StringPtr plugin) {
  for (auto& channel : channels) {
    for (auto& name : channel->entry().services) {
      if (name == service) {
        return capnp::Capability::Client(
            kj::heap<RemoteRoute>(kj::addRef(*channel), service, plugin, outbound));
      }
    }
  }
  return nullptr;
}

void ShardOutbound::close() {
  for (auto& channel : channels)
    channel->close();
}

}  // namespace payhost::host
