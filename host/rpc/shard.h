// A shard: one thread running one KJ event loop, serving the connections handed to it with its
// own instance of every service.
//
// The control thread owns the `Shard` object and talks to the shard's thread only through
// `run()`, which executes a function on the shard's loop and returns its result as a promise on
// the caller's loop. Inside such a function, `ShardState` is the shard's world.
//
// Thread-safety: `Shard`'s methods are control-thread only; `ShardState` is shard-local.

#pragma once

#include "host/log/logger.h"
#include "host/outbound/outbound.h"
#include "host/registry/shard-services.h"
#include "host/rpc/client-policy.h"
#include "host/rpc/tls-server.h"

#include <capnp/message.h>
#include <kj/async-io.h>
#include <kj/function.h>
#include <kj/mutex.h>
#include <kj/thread.h>

#include <atomic>
#include <set>

namespace payhost::host {

class ShardState {
public:
  ShardState(uint32_t index, uint32_t count, LogSink& log, kj::AsyncIoContext& io,
             HostShared& counters, capnp::ReaderOptions readerOptions, const ClientPolicy& policy);
  ~ShardState() noexcept(false);

  ShardServices& services() { return services_; }

  // Serves the Gateway on the connected socket `fd` (owned from now on). With `tls`, after a TLS
  // handshake (bounded by `limits.handshake_timeout_ms`) to the client's certificate identity;
  // without (an insecure listener), to `insecureIdentity`. The caller has counted the connection
  // in `SecurityCounters::connectionsOpen`; the shard uncounts it when it closes.
  void adopt(int fd, kj::Own<const TlsServer> tls, kj::StringPtr insecureIdentity);

  // Closes every connection the way a client hanging up would: reading stops, then the RPC
  // system sends what it has queued (answers to calls that just completed), shuts the socket's
  // write side and drops the connection. Connections handed over afterwards are closed at once.
  // Resolves when none is left.
  kj::Promise<void> closeConnections();

  // Closes every connection (dropping whatever it had not sent), then revokes and destroys
  // every plugin instance.
  void close();

  uint32_t index() const { return index_; }
  std::atomic<uint32_t> connectionsOpen{0};

private:
  class Connection;
  void serve(kj::Own<kj::AsyncIoStream> stream, kj::String identity);
  class ErrorHandler final : public kj::TaskSet::ErrorHandler {
  public:
    explicit ErrorHandler(LogSink& log) : log(log) {}
    void taskFailed(kj::Exception&& exception) override;
    LogSink& log;
  };

  uint32_t index_;
  LogSink& log;
  kj::AsyncIoContext& io;
  capnp::ReaderOptions readerOptions;
  // Before `services_`: plugin instances hold capabilities that use it.
  kj::Maybe<kj::Own<ShardOutbound>> outbound;
  const ClientPolicy& policy;
  ShardServices services_;
  ErrorHandler errorHandler{log};
  kj::Maybe<kj::Own<kj::TaskSet>> connections;
  // The connections in `connections`, to stop reading from them.
  std::set<Connection*> open;
  bool closing = false;
};

class Shard {
public:
  // Starts the shard's thread and waits until its loop runs.
  // `policy` outlives the shard.
  Shard(uint32_t index, uint32_t count, LogSink& log, HostShared& counters,
        capnp::ReaderOptions readerOptions, const ClientPolicy& policy);
  // Stops the loop (if `stop()` was not called) and joins the thread.
  ~Shard() noexcept(false);
  KJ_DISALLOW_COPY(Shard);

  // Runs `func(ShardState&)` on the shard's thread; the result (or promise) comes back on the
  // caller's event loop.
  template <typename Func>
  auto run(Func&& func) {
    return executor->executeAsync(
        [state = state, func = kj::fwd<Func>(func)]() mutable { return func(*state); });
  }

  // Asks the shard's loop to finish after `ShardState::close()`; the destructor joins.
  kj::Promise<void> stop();

  uint32_t index() const { return index_; }
  uint32_t connectionsOpen() const { return state->connectionsOpen.load(); }

private:
  void threadMain(LogSink& log, HostShared& counters, capnp::ReaderOptions readerOptions,
                  const ClientPolicy& policy);

  uint32_t index_;
  uint32_t count;
  // Set by the shard's thread before the constructor returns; only dereferenced on that thread
  // except for the atomics.
  ShardState* state = nullptr;
  const kj::Executor* executor = nullptr;
  kj::Own<kj::PromiseFulfiller<void>>* stopFulfiller = nullptr;
  kj::MutexGuarded<bool> started{false};
  bool stopRequested = false;
  kj::Own<kj::Thread> thread;
};

}  // namespace payhost::host
