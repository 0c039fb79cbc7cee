#include "host/rpc/shard.h"

#include "host/rpc/buffered-stream.h"
#include "host/rpc/gateway.h"

#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>

#include <unistd.h>

namespace payhost::host {

class ShardState::Connection {
public:
  Connection(kj::Own<kj::AsyncIoStream> stream, capnp::Capability::Client bootstrap,
             capnp::ReaderOptions readerOptions, ShardState& shard)
      : shard(shard),
        stream(kj::mv(stream)),
        network(*this->stream, capnp::rpc::twoparty::Side::SERVER, readerOptions),
        rpc(capnp::makeRpcServer(network, kj::mv(bootstrap))) {
    shard.connectionsOpen.fetch_add(1, std::memory_order_relaxed);
    shard.open.insert(this);
  }
  ~Connection() noexcept(false) {
    shard.open.erase(this);
    shard.connectionsOpen.fetch_sub(1, std::memory_order_relaxed);
  }

  kj::Promise<void> onDisconnect() { return network.onDisconnect(); }

  // The RPC system reads end-of-stream and disconnects as if the client had hung up: it flushes
  // what it queued, shuts down writing and releases the network, so `onDisconnect()` resolves.
  void stopReading() {
    // Fails only when the socket is already disconnected, and then the read fails by itself.
    kj::runCatchingExceptions([this]() { stream->abortRead(); });
  }

private:
  ShardState& shard;
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
                       HostShared& counters, capnp::ReaderOptions readerOptions)
    : index_(index),
      log(log),
      io(io),
      readerOptions(readerOptions),
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

void ShardState::adopt(int fd) {
  if (closing) {
    ::close(fd);
    return;
  }
  KJ_IF_MAYBE (tasks, connections) {
    // Buffered: reads and writes of a burst of calls coalesce into one system call each.
    auto stream = bufferStream(
        io.lowLevelProvider->wrapSocketFd(fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
                                                  kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC |
                                                  kj::LowLevelAsyncIoProvider::ALREADY_NONBLOCK));
    auto connection = kj::heap<Connection>(kj::mv(stream), kj::heap<GatewayServer>(services_),
                                           readerOptions, *this);
    auto done = connection->onDisconnect();
    (*tasks)->add(done.attach(kj::mv(connection)));
  } else {
    ::close(fd);
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
             capnp::ReaderOptions readerOptions)
    : index_(index), count(count) {
  thread = kj::heap<kj::Thread>(
      [this, &log, &counters, readerOptions]() { threadMain(log, counters, readerOptions); });
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

void Shard::threadMain(LogSink& log, HostShared& counters, capnp::ReaderOptions readerOptions) {
  auto io = kj::setupAsyncIo();
  // KJ checks timers only when its queue is empty unless told to poll; under load a drain
  // deadline would stretch far past its configured value.
  io.waitScope.setBusyPollInterval(64);
  ShardState shardState(index_, count, log, io, counters, readerOptions);
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
