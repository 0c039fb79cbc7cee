#include "host/rpc/shard.h"

#include "host/rpc/buffered-stream.h"
#include "host/rpc/gateway.h"

#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

namespace payhost::host {

namespace {

// Events a busy shard runs between two looks at epoll (timers, other connections, work from the
// control thread). Each look is an epoll_wait system call: at 64, under load it was 0.4 of them
// per call (bare Cap'n Proto: 0.015); at 1024 a look comes every few hundred microseconds.
constexpr uint BUSY_POLL_EVENTS = 1024;

// A failed handshake's reason, one of a few words: the audit throttle's key must stay bounded
// whatever text OpenSSL puts in the error.
kj::StringPtr handshakeFailure(kj::StringPtr description) {
  auto has = [&](const char* text) { return strstr(description.cStr(), text) != nullptr; };
  if (has("no-identity: ")) return "no-identity";
  if (has("peer did not return a certificate")) return "no-certificate";
  if (has("certificate verify failed") || has("certificate expired") || has("unknown ca") ||
      has("bad certificate")) {
    return "certificate-refused";
  }
  if (has("unsupported protocol") || has("protocol version")) return "old-protocol";
  if (has("wrong version number") || has("http request")) return "not-tls";
  if (has("no shared cipher")) return "no-shared-cipher";
  return "other";
}

// "peer=ADDRESS" of a connected TCP socket, or "peer=local" (unix socket, or unknown).
kj::String peerOf(int fd) {
  sockaddr_storage address{};
  socklen_t size = sizeof(address);
  char text[INET6_ADDRSTRLEN] = {};
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&address), &size) == 0) {
    if (address.ss_family == AF_INET &&
        inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&address)->sin_addr, text,
                  sizeof(text)) != nullptr) {
      return kj::str("peer=", text);
    }
    if (address.ss_family == AF_INET6 &&
        inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&address)->sin6_addr, text,
                  sizeof(text)) != nullptr) {
      return kj::str("peer=", text);
    }
  }
  return kj::str("peer=local");
}

}  // namespace

class ShardState::Connection {
public:
  Connection(kj::Own<kj::AsyncIoStream> stream, kj::Own<ConnectionCaller> connectionCaller,
             capnp::ReaderOptions readerOptions, ShardState& shard)
      : shard(shard),
        caller(*connectionCaller),
        stream(kj::mv(stream)),
        network(*this->stream, capnp::rpc::twoparty::Side::SERVER, readerOptions),
        rpc(capnp::makeRpcServer(
            network, kj::heap<GatewayServer>(shard.services_, kj::mv(connectionCaller)))) {
    shard.open.insert(this);
  }
  ~Connection() noexcept(false) { shard.open.erase(this); }

  // Resolves when the client hangs up, the connection fails (a message over the limits), or it
  // has been idle for `limits.idle_timeout_ms`.
  kj::Promise<void> onDisconnect() {
    auto idle = shard.policy.limits.idleTimeout;
    if (idle == 0 * kj::SECONDS) return network.onDisconnect();
    return network.onDisconnect().exclusiveJoin(closeWhenIdle(idle));
  }

  // The RPC system reads end-of-stream and disconnects as if the client had hung up: it flushes
  // what it queued, shuts down writing and releases the network, so `onDisconnect()` resolves.
  void stopReading() {
    // Fails only when the socket is already disconnected, and then the read fails by itself.
    kj::runCatchingExceptions([this]() { stream->abortRead(); });
  }

private:
  kj::Promise<void> closeWhenIdle(kj::Duration idle) {
    auto& timer = shard.io.provider->getTimer();
    auto due = caller.lastActivity() + idle;
    return timer.atTime(due).then([this, idle, &timer]() -> kj::Promise<void> {
      if (caller.inFlight() > 0) {
        // Busy: look again one idle period from now (its last call ends the activity).
        return timer.afterDelay(idle).then([this, idle]() { return closeWhenIdle(idle); });
      }
      if (timer.now() < caller.lastActivity() + idle) return closeWhenIdle(idle);
      shard.policy.counters.connectionsIdleClosed.fetch_add(1, std::memory_order_relaxed);
      auto ms = kj::str(idle / kj::MILLISECONDS);
      LogField fields[] = {{"identity", caller.identity()}, {"idle_ms", ms}};
      shard.log.write(LogLevel::INFO, "connection.idle_closed", nullptr, fields);
      return kj::READY_NOW;
    });
  }

  ShardState& shard;
  // Owned by the gateway, which the RPC system holds as long as the connection.
  ConnectionCaller& caller;
  kj::Own<kj::AsyncIoStream> stream;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
};

void ShardState::ErrorHandler::taskFailed(kj::Exception&& exception) {
  auto description = exception.getDescription();
  LogField fields[] = {{"error", description}};
  log.write(LogLevel::DEBUG, "connection.failed", nullptr, fields);
}

ShardState::ShardState(uint32_t index, uint32_t count, LogSink& log, kj::AsyncIoContext& io,
                       HostShared& counters, capnp::ReaderOptions readerOptions,
                       const ClientPolicy& policy)
    : index_(index),
      log(log),
      io(io),
      readerOptions(readerOptions),
      policy(policy),
      services_(index, count, log, io.provider->getTimer(), counters),
      connections(kj::heap<kj::TaskSet>(errorHandler)) {
  if (counters.outbound != nullptr) {
    auto shardOutbound = kj::heap<ShardOutbound>(*counters.outbound, index, log, *io.provider);
    services_.setOutbound(*shardOutbound);
    outbound = kj::mv(shardOutbound);
  }
}

ShardState::~ShardState() noexcept(false) {
  close();
}

void ShardState::adopt(int fd, kj::Own<const TlsServer> tls, kj::StringPtr insecureIdentity) {
  auto& counters = policy.counters;
  // Every path from here closes `fd` exactly once and uncounts the connection when it goes.
  connectionsOpen.fetch_add(1, std::memory_order_relaxed);
  auto uncount = kj::defer([this, &counters]() {
    connectionsOpen.fetch_sub(1, std::memory_order_relaxed);
    counters.connectionsOpen.fetch_sub(1, std::memory_order_relaxed);
  });
  auto stream =
      io.lowLevelProvider->wrapSocketFd(fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
                                                kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC |
                                                kj::LowLevelAsyncIoProvider::ALREADY_NONBLOCK);
  if (closing) return;
  KJ_IF_MAYBE (tasks, connections) {
    if (tls.get() == nullptr) {
      // Buffered: reads and writes of a burst of calls coalesce into one system call each.
      auto connection =
          kj::heap<Connection>(bufferStream(kj::mv(stream)),
                               kj::refcounted<ConnectionCaller>(kj::heapString(insecureIdentity),
                                                                policy, io.provider->getTimer()),
                               readerOptions, *this);
      auto done = connection->onDisconnect();
      (*tasks)->add(done.attach(kj::mv(connection), kj::mv(uncount)));
      return;
    }
    auto& timer = io.provider->getTimer();
    auto timeout = policy.limits.handshakeTimeout;
    // The audit record's actor: the client has no identity before its handshake completes.
    auto peer = peerOf(fd);
    auto handshake =
        tls->accept(kj::mv(stream))
            .then([](TlsServer::Accepted&& accepted) -> kj::Maybe<TlsServer::Accepted> {
              return kj::mv(accepted);
            })
            .exclusiveJoin(timer.afterDelay(timeout).then(
                []() -> kj::Maybe<TlsServer::Accepted> { return nullptr; }));
    (*tasks)->add(handshake
                      .then(
                          [this, &counters, timeout,
                           peerText = peer.asPtr()](kj::Maybe<TlsServer::Accepted>&& accepted) {
                            KJ_IF_MAYBE (done, accepted) {
                              serve(kj::mv(done->stream), kj::mv(done->identity));
                            } else {
                              counters.handshakesTimedOut.fetch_add(1, std::memory_order_relaxed);
                              auto ms = kj::str(timeout / kj::MILLISECONDS);
                              LogField fields[] = {{"timeout_ms", ms}};
                              log.write(LogLevel::INFO, "tls.handshake_timeout", nullptr, fields);
                              auditSecurityEvent(policy, "auth-failed", peerText,
                                                 "handshake-timeout",
                                                 kj::str("TLS handshake not done in ", ms, " ms"));
                            }
                          },
                          [this, &counters, peerText = peer.asPtr()](kj::Exception&& e) {
                            counters.handshakesFailed.fetch_add(1, std::memory_order_relaxed);
                            auto description = e.getDescription();
                            LogField fields[] = {{"error", description}};
                            log.write(LogLevel::INFO, "tls.handshake_failed", nullptr, fields);
                            auditSecurityEvent(policy, "auth-failed", peerText,
                                               handshakeFailure(description), description);
                          })
                      .attach(kj::mv(uncount), kj::mv(tls), kj::mv(peer)));
  }
}

void ShardState::serve(kj::Own<kj::AsyncIoStream> stream, kj::String identity) {
  if (closing) return;
  KJ_IF_MAYBE (tasks, connections) {
    // A connection over TLS counts until its socket goes: `serve` runs inside the handshake's
    // task, whose own count ends when it returns, so count this one separately.
    policy.counters.connectionsOpen.fetch_add(1, std::memory_order_relaxed);
    connectionsOpen.fetch_add(1, std::memory_order_relaxed);
    auto uncount = kj::defer([this]() {
      connectionsOpen.fetch_sub(1, std::memory_order_relaxed);
      policy.counters.connectionsOpen.fetch_sub(1, std::memory_order_relaxed);
    });
    // Buffered above TLS: a burst of calls costs one TLS record and one system call each way.
    auto connection = kj::heap<Connection>(
        bufferStream(kj::mv(stream)),
        kj::refcounted<ConnectionCaller>(kj::mv(identity), policy, io.provider->getTimer()),
        readerOptions, *this);
    auto done = connection->onDisconnect();
    (*tasks)->add(done.attach(kj::mv(connection), kj::mv(uncount)));
  }
}

kj::Promise<void> ShardState::closeConnections() {
  closing = true;
  KJ_IF_MAYBE (tasks, connections) {
    for (auto connection : open) {
      connection->stopReading();
    }
    return (*tasks)->onEmpty();
  }
  return kj::READY_NOW;
}

void ShardState::close() {
  // Connections first: they hold routes and gateways that point into `services_`.
  connections = nullptr;
  services_.clear();
  // After the instances: a plugin's last calls to a remote fail DISCONNECTED, not on a dangling
  // pointer. The capabilities themselves stay valid.
  KJ_IF_MAYBE (remotes, outbound) {
    (*remotes)->close();
  }
}

Shard::Shard(uint32_t index, uint32_t count, LogSink& log, HostShared& counters,
             capnp::ReaderOptions readerOptions, const ClientPolicy& policy)
    : index_(index), count(count) {
  thread = kj::heap<kj::Thread>([this, &log, &counters, readerOptions, &policy]() {
    threadMain(log, counters, readerOptions, policy);
  });
  started.when([](const bool& ready) { return ready; }, [](const bool&) {});
}

Shard::~Shard() noexcept(false) {
  if (!stopRequested) {
    executor->executeSync([this]() {
      state->close();
      if ((*stopFulfiller)->isWaiting()) (*stopFulfiller)->fulfill();
    });
  }
  thread = nullptr;  // joins
}

kj::Promise<void> Shard::stop() {
  stopRequested = true;
  return executor->executeAsync([this]() {
    state->close();
    if ((*stopFulfiller)->isWaiting()) (*stopFulfiller)->fulfill();
  });
}

void Shard::threadMain(LogSink& log, HostShared& counters, capnp::ReaderOptions readerOptions,
                       const ClientPolicy& policy) {
  auto io = kj::setupAsyncIo();
  // KJ checks timers only when its queue is empty unless told to poll; under load a drain
  // deadline would stretch far past its configured value.
  io.waitScope.setBusyPollInterval(BUSY_POLL_EVENTS);
  ShardState shardState(index_, count, log, io, counters, readerOptions, policy);
  auto paf = kj::newPromiseAndFulfiller<void>();
  state = &shardState;
  executor = &kj::getCurrentThreadExecutor();
  stopFulfiller = &paf.fulfiller;
  *started.lockExclusive() = true;
  paf.promise.wait(io.waitScope);
  shardState.close();
  // Let the plugin objects that die one turn after their capabilities are dropped go now,
  // while their library is certainly loaded.
  for (int i = 0; i < 8; ++i)
    io.waitScope.poll();
}

}  // namespace payhost::host
