// payhost-bench-suite: the performance suite. The card processor's authorize call through
// payhostd, beside the baselines a payment team would otherwise run, in one run:
//
//   payhost-bench-suite --payhostd build/host/payhostd
//       --plugin build/plugins/card-processor/card-processor.so
//       [--grpc-server build/bench/grpc/payhost-bench-grpc-server] [--certs DIR]
//       [--rounds 5] [--seconds 3] [--shards 1] [--connections 4] [--json FILE] [--plot-data DIR]
//
// (bench/run.sh runs it with the paths of a build tree, makes the certificates and draws the
// plot.) Servers, each its own process listening on loopback TCP and on a unix socket:
//   payhostd  the daemon: Gateway -> route (call pin, counters) -> membrane -> plugin
//   bare      this program in `--serve-bare` mode: the plugin's service object, loaded the same
//             way (memfd + Boost.DLL), as the bootstrap capability of a plain Cap'n Proto server,
//             called by a plain Cap'n Proto client: Cap'n Proto out of the box
//   bare-buf  the same with payhostd's BufferedStream (host/rpc/buffered-stream.h) on both ends,
//             as payhostd and its client have: payhostd's own cost is payhostd over bare-buf
//   grpc      bench/grpc: the same issuer behind gRPC's callback API (protobuf messages with the
//             same fields); left out when the build found no gRPC
//   raw       this program in `--serve-raw` mode: the kernel's floor. Fixed-size messages of the
//             Cap'n Proto request and response sizes, echoed by a blocking thread per connection
//             that answers every complete request it has read with one write; no parsing, no work
// Cases: 1 call in flight (latency); 64 in flight on one connection; 64 in flight on each of
// `--connections` connections; over TCP and over a unix socket. With `--certs DIR` (made by
// scripts/make-certs.sh DIR bench-client), also over TLS 1.3 with a client certificate:
// payhostd's TLS listener and bare-buf behind the same TLS server code (host/rpc/tls-server.h),
// beside payhostd's plaintext listener (`payhostd-plain`, the same process) in the same turns,
// 1 and 64 in flight on reused connections; and connection setup: a new connection (TCP
// connect, TLS handshake, bootstrap, `--calls-per-connection` calls, close) per unit, over TLS
// and over plaintext, for handshakes per second and server CPU per handshake. The payment flow
// is payhost-flow-bench (see README.md).
//
// Each case measures the servers in turns (payhostd, bare, grpc, raw, payhostd, ...) so drift on a
// shared machine hits all of them. Per server and case: calls/s, p50/p99/p999 latency, server CPU
// per call (utime+stime of the server process, all threads, from /proc), client CPU per call (this
// process, all threads, getrusage), and calls per server-CPU-second, the headline figure where
// client and server share the cores; medians with min-max over the rounds, and paired ratios
// (payhostd against each baseline in the same round). At the end, the performance issue's
// targets with the figure each got.

#include "bench/loadgen.h"
#include "bench/server-process.h"
#include "host/loader/plugin-library.h"
#include "host/rpc/buffered-stream.h"
#include "host/rpc/tls-server.h"

#include <payhost/host.capnp.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>

#include <capnp/rpc-twoparty.h>
#include <capnp/rpc.capnp.h>
#include <capnp/serialize.h>
#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/compat/tls.h>
#include <kj/debug.h>

#include <CLI/CLI.hpp>

#ifdef PAYHOST_BENCH_GRPC
#include "bench/grpc/grpc-client.h"
#endif

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace payhost::bench {
namespace {

using schema::CardProcessor;

// --- the bare server --------------------------------------------------------------------------

class BareLogger final : public Logger {
public:
  void write(LogLevel, kj::StringPtr, kj::ArrayPtr<const LogField>) override {}
  bool enabled(LogLevel) const override { return false; }
};

class BareClock final : public Clock {
public:
  explicit BareClock(kj::Timer& timer) : timer_(timer) {}
  kj::Date now() override { return kj::systemPreciseCalendarClock().now(); }
  kj::Timer& timer() override { return timer_; }

private:
  kj::Timer& timer_;
};

class BareContext final : public Context {
public:
  BareContext(kj::Timer& timer, const payhost_plugin_v1_descriptor& descriptor)
      : clock_(timer), descriptor(descriptor) {}
  kj::StringPtr pluginName() override { return descriptor.name; }
  kj::StringPtr pluginVersion() override { return descriptor.version; }
  uint32_t shardIndex() override { return 0; }
  uint32_t shardCount() override { return 1; }
  Logger& log() override { return logger; }
  const Config& config() override { return config_; }
  Clock& clock() override { return clock_; }
  capnp::Capability::Client serviceCapability(kj::StringPtr name) override {
    return KJ_EXCEPTION(DISCONNECTED, "no other services in the bare server", name);
  }
  KeyHandle& keys(kj::StringPtr name) override {
    KJ_FAIL_REQUIRE("no keys in the bare server", name);
  }
  Database& sql(kj::StringPtr name) override {
    KJ_FAIL_REQUIRE("no databases in the bare server", name);
  }
  kj::Promise<void> offloadWork(kj::Function<void()> work) override {
    work();
    return kj::READY_NOW;
  }
  kj::StringPtr callerOf(const void*) override { return "bench"; }

private:
  BareLogger logger;
  BareClock clock_;
  Config config_;
  const payhost_plugin_v1_descriptor& descriptor;
};

// Accepts connections on `listener` for `server`, each wrapped in payhostd's BufferedStream;
// with `tls`, after a TLS handshake (the buffer above TLS, as payhostd has it).
kj::Promise<void> acceptBuffered(capnp::TwoPartyServer& server, kj::ConnectionReceiver& listener,
                                 const host::TlsServer* tls, kj::TaskSet& handshakes) {
  return listener.accept().then([&, tls](kj::Own<kj::AsyncIoStream> stream) {
    if (tls == nullptr) {
      server.accept(host::bufferStream(kj::mv(stream)));
    } else {
      handshakes.add(tls->accept(kj::mv(stream)).then([&](host::TlsServer::Accepted&& accepted) {
        server.accept(host::bufferStream(kj::mv(accepted.stream)));
      }));
    }
    return acceptBuffered(server, listener, tls, handshakes);
  });
}

class IgnoreFailures final : public kj::TaskSet::ErrorHandler {
public:
  // A failed handshake is the client's problem; the suite counts its failed calls.
  void taskFailed(kj::Exception&&) override {}
};

host::TlsConfig tlsConfig(kj::StringPtr certs) {
  host::TlsConfig config;
  config.certificate = kj::str(certs, "/server.pem");
  config.privateKey = kj::str(certs, "/server.key");
  config.clientCa = kj::str(certs, "/ca.pem");
  return config;
}

// Serves until SIGTERM. Prints "listening PORT" (TCP), or "listening PORT TLSPORT" when `certs`
// names a certificate folder (buffered only).
int serveBare(kj::StringPtr pluginPath, kj::StringPtr service, kj::StringPtr unixPath,
              bool buffered, kj::StringPtr certs) {
  auto io = kj::setupAsyncIo();
  auto library = host::PluginLibrary::load(pluginPath, 1);
  auto& descriptor = library->descriptor();
  BareContext context(io.provider->getTimer(), descriptor);
  char message[512] = {0};
  payhost_error_v1 error{message, sizeof(message)};
  auto instance = static_cast<Plugin*>(descriptor.create(static_cast<Context*>(&context), &error));
  KJ_REQUIRE(instance != nullptr, message);
  {
    kj::Maybe<kj::Own<host::TlsServer>> tls;
    if (certs.size() > 0) {
      KJ_REQUIRE(buffered, "the bare server serves TLS only with --buffered");
      tls = kj::atomicRefcounted<host::TlsServer>(tlsConfig(certs));
    }
    IgnoreFailures ignore;
    kj::TaskSet handshakes(ignore);
    capnp::TwoPartyServer server(instance->service(service));
    auto& network = io.provider->getNetwork();
    auto listener = network.parseAddress("127.0.0.1:0").wait(io.waitScope)->listen();
    auto unixListener =
        network.parseAddress(kj::str("unix:", unixPath)).wait(io.waitScope)->listen();
    kj::Own<kj::ConnectionReceiver> tlsListener;
    auto serving =
        buffered ? acceptBuffered(server, *listener, nullptr, handshakes)
                       .exclusiveJoin(acceptBuffered(server, *unixListener, nullptr, handshakes))
                 : server.listen(*listener).exclusiveJoin(server.listen(*unixListener));
    KJ_IF_MAYBE (tlsServer, tls) {
      tlsListener = network.parseAddress("127.0.0.1:0").wait(io.waitScope)->listen();
      serving =
          serving.exclusiveJoin(acceptBuffered(server, *tlsListener, tlsServer->get(), handshakes));
      printf("listening %u %u\n", listener->getPort(), tlsListener->getPort());
    } else {
      printf("listening %u\n", listener->getPort());
    }
    fflush(stdout);
    io.unixEventPort.captureSignal(SIGTERM);
    serving.exclusiveJoin(io.unixEventPort.onSignal(SIGTERM).ignoreResult()).wait(io.waitScope);
  }
  descriptor.destroy(instance);
  return 0;
}

// --- message sizes ----------------------------------------------------------------------------

// Fills an authorize request the way every client of the suite does.
void fillRequest(schema::AuthorizeRequest::Builder body, kj::StringPtr key, uint64_t sequence) {
  body.setMerchantId("merchant-000042");
  auto amount = body.initAmount();
  amount.setMinorUnits(1250 + static_cast<int64_t>(sequence % 1000) * 100);
  amount.setCurrency("EUR");
  body.setCardToken("tok_visa_approve");
  body.setIdempotencyKey(key);
  auto metadata = body.initMetadata(2);
  metadata[0].setKey("channel");
  metadata[0].setValue("web");
  metadata[1].setKey("order");
  metadata[1].setValue("A-1001");
}

struct MessageSizes {
  size_t request;
  size_t response;
};

// The bytes Cap'n Proto RPC puts on the wire for one authorize call and its return (segment
// table included), so the raw floor moves the same amount of data.
MessageSizes capnpMessageSizes() {
  MessageSizes sizes{};
  {
    capnp::MallocMessageBuilder message;
    auto call = message.initRoot<capnp::rpc::Message>().initCall();
    call.setQuestionId(1);
    call.initTarget().setImportedCap(1);
    call.setInterfaceId(capnp::typeId<CardProcessor>());
    call.setMethodId(0);
    auto params = call.initParams().initContent().initAs<CardProcessor::AuthorizeParams>();
    fillRequest(params.initRequest(), "bench-payhostd-1000000", 1000000);
    sizes.request = capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word);
  }
  {
    capnp::MallocMessageBuilder message;
    auto ret = message.initRoot<capnp::rpc::Message>().initReturn();
    ret.setAnswerId(1);
    auto results = ret.initResults().initContent().initAs<CardProcessor::AuthorizeResults>();
    auto approved = results.initResult().initApproved();
    approved.setTransactionId("txn-0-0000000001000000");
    approved.setAuthCode("A1B2C3");
    auto amount = approved.initAmount();
    amount.setMinorUnits(1250);
    amount.setCurrency("EUR");
    approved.setState(schema::TransactionState::AUTHORIZED);
    sizes.response = capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word);
  }
  return sizes;
}

// --- the raw floor server ---------------------------------------------------------------------

void writeAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data += n;
    size -= static_cast<size_t>(n);
  }
}

void serveRawConnection(int fd, MessageSizes sizes) {
  std::vector<char> in(size_t{64} * 1024);
  std::vector<char> out;
  size_t partial = 0;
  for (;;) {
    ssize_t n = ::read(fd, in.data(), in.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    partial += static_cast<size_t>(n);
    size_t complete = partial / sizes.request;
    partial %= sizes.request;
    if (complete == 0) continue;
    if (out.size() < complete * sizes.response) out.resize(complete * sizes.response, 'r');
    writeAll(fd, out.data(), complete * sizes.response);
  }
  ::close(fd);
}

void acceptRaw(int listener, MessageSizes sizes, bool tcp) {
  for (;;) {
    int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;
    }
    if (tcp) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    std::thread(serveRawConnection, fd, sizes).detach();
  }
}

// Serves until killed (SIGTERM's default action ends it).
int serveRaw(kj::StringPtr unixPath) {
  auto sizes = capnpMessageSizes();
  int tcp = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  KJ_SYSCALL(::bind(tcp, reinterpret_cast<sockaddr*>(&address), sizeof(address)));
  KJ_SYSCALL(::listen(tcp, 128));
  KJ_SYSCALL(::getsockname(tcp, reinterpret_cast<sockaddr*>(&address), &length));
  int local = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un path{};
  path.sun_family = AF_UNIX;
  KJ_REQUIRE(unixPath.size() < sizeof(path.sun_path), "unix socket path too long");
  memcpy(path.sun_path, unixPath.cStr(), unixPath.size());
  KJ_SYSCALL(::bind(local, reinterpret_cast<sockaddr*>(&path), sizeof(path)));
  KJ_SYSCALL(::listen(local, 128));
  printf("listening %u\n", ntohs(address.sin_port));
  fflush(stdout);
  std::thread(acceptRaw, local, sizes, false).detach();
  acceptRaw(tcp, sizes, true);
  return 0;
}

// --- the raw floor client ---------------------------------------------------------------------

using SteadyClock = std::chrono::steady_clock;

int connectRaw(uint16_t port, kj::StringPtr unixPath) {
  int fd;
  if (unixPath.size() > 0) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un path{};
    path.sun_family = AF_UNIX;
    memcpy(path.sun_path, unixPath.cStr(), unixPath.size());
    KJ_SYSCALL(::connect(fd, reinterpret_cast<sockaddr*>(&path), sizeof(path)));
  } else {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(port);
    KJ_SYSCALL(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  return fd;
}

// One connection's closed loop: `inFlight` requests outstanding; every read's complete responses
// are answered with one write of as many new requests (the batching floor).
void rawConnectionLoop(int fd, MessageSizes sizes, uint32_t inFlight,
                       SteadyClock::time_point windowStart, SteadyClock::time_point windowEnd,
                       LoadResult& result) {
  std::deque<SteadyClock::time_point> started;
  std::vector<char> out(sizes.request * inFlight, 'q');
  std::vector<char> in(size_t{64} * 1024);
  auto send = [&](size_t count) {
    auto now = SteadyClock::now();
    for (size_t i = 0; i < count; ++i)
      started.push_back(now);
    writeAll(fd, out.data(), count * sizes.request);
  };
  send(inFlight);
  size_t partial = 0;
  while (!started.empty()) {
    ssize_t n = ::read(fd, in.data(), in.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      result.failed += started.size();
      result.firstError = kj::str("raw connection closed");
      break;
    }
    auto now = SteadyClock::now();
    partial += static_cast<size_t>(n);
    size_t complete = partial / sizes.response;
    partial %= sizes.response;
    for (size_t i = 0; i < complete; ++i) {
      auto start = started.front();
      started.pop_front();
      if (start >= windowStart) {
        ++result.completed;
        result.latency.record(
            std::chrono::duration_cast<std::chrono::nanoseconds>(now - start).count());
      }
    }
    if (complete > 0 && now < windowEnd) send(complete);
  }
  ::close(fd);
}

LoadResult runRawClosedLoop(uint16_t port, kj::StringPtr unixPath, MessageSizes sizes,
                            uint32_t connections, uint32_t inFlight,
                            std::chrono::nanoseconds warmUp, std::chrono::nanoseconds duration,
                            const std::function<void()>& onWindowStart) {
  std::vector<int> fds;
  for (uint32_t i = 0; i < connections; ++i)
    fds.push_back(connectRaw(port, unixPath));
  auto now = SteadyClock::now();
  auto windowStart = now + warmUp;
  auto windowEnd = windowStart + duration;
  std::vector<LoadResult> results(connections);
  std::vector<std::thread> threads;
  for (uint32_t i = 0; i < connections; ++i) {
    threads.emplace_back(rawConnectionLoop, fds[i], sizes, inFlight, windowStart, windowEnd,
                         std::ref(results[i]));
  }
  std::this_thread::sleep_until(windowStart);
  onWindowStart();
  for (auto& thread : threads)
    thread.join();
  LoadResult total;
  for (auto& result : results) {
    total.completed += result.completed;
    total.failed += result.failed;
    total.latency.merge(result.latency);
    if (total.firstError == nullptr) total.firstError = kj::mv(result.firstError);
  }
  total.elapsedSeconds = std::chrono::duration<double>(SteadyClock::now() - windowStart).count();
  total.callsPerSecond = static_cast<double>(total.completed) / total.elapsedSeconds;
  return total;
}

// --- servers ----------------------------------------------------------------------------------

enum class Kind { PAYHOSTD, BARE, BARE_BUFFERED, GRPC, RAW };

struct Server {
  Kind kind = Kind::RAW;
  kj::String name;
  pid_t pid = -1;
  uint16_t port = 0;
  kj::String unixPath;
  // The TLS listener's port; 0: this server is not measured over TLS.
  uint16_t tlsPort = 0;
  // payhostd's plaintext TCP listener in the TLS cases only (the same process as `payhostd`):
  // TLS's cost is payhostd over payhostd-plain, measured in the same turns.
  bool plaintextReference = false;
};

// The port a baseline server printed ("listening PORT [TLSPORT]") into its log; the TLS port, when
// printed, into `tlsPort`.
kj::Maybe<uint16_t> printedPort(kj::StringPtr logPath, uint16_t& tlsPort) {
  std::ifstream in(logPath.cStr());
  std::string word;
  int port = 0, second = 0;
  if (!(in >> word >> port) || word != "listening" || port <= 0) return nullptr;
  if (in >> second && second > 0) tlsPort = static_cast<uint16_t>(second);
  return static_cast<uint16_t>(port);
}

void stopServer(Server& server) {
  kill(server.pid, SIGTERM);
  int status = 0;
  waitpid(server.pid, &status, 0);
}

double clientCpuMicros() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6 +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

// --- cases and measurements -------------------------------------------------------------------

enum class Transport { TCP, UNIX, TLS };

const char* transportName(Transport transport) {
  switch (transport) {
    case Transport::TCP:
      return "tcp";
    case Transport::UNIX:
      return "unix";
    case Transport::TLS:
      return "tls";
  }
  return "?";
}

struct Case {
  std::string name;
  uint32_t inFlight;
  uint32_t connections;
  Transport transport;
  // 0: each of `connections` is set up once and reused for the whole run. N > 0, the
  // connection-setup case: the unit of load is a new connection (connect, TLS handshake over TLS,
  // bootstrap, N calls one after another, close), `inFlight` of them at once; calls/s, latency
  // and CPU per call are then per connection.
  uint32_t callsPerConnection = 0;
};

// Whether `server` takes part in case `c`: TLS cases only for servers with a TLS listener, and
// payhostd-plain only there.
bool measuredIn(const Server& server, const Case& c) {
  if (c.transport == Transport::TLS) return server.tlsPort != 0 || server.plaintextReference;
  return !server.plaintextReference;
}

struct Measurement {
  double callsPerSecond = 0;
  double p50Micros = 0;
  double p99Micros = 0;
  double p999Micros = 0;
  double serverCpuMicrosPerCall = 0;
  double clientCpuMicrosPerCall = 0;
  double callsPerServerCpuSecond = 0;
  uint64_t failed = 0;
  std::string firstError;
};

constexpr auto WARM_UP = 300 * kj::MILLISECONDS;

// One Cap'n Proto client connection: the stream (TLS and buffered as the server wants), the
// two-party client and the card processor's capability. Members go in reverse order.
struct CapnpConnection {
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> client;
  CardProcessor::Client card = nullptr;
};

// Opens a connection to `address`: TLS with `tls` when given, then (but for `bare`) a
// BufferedStream, then payhostd's Gateway.getService("payments.card") pipelined, or the bare
// servers' bootstrap.
kj::Promise<kj::Own<CapnpConnection>> openCapnp(kj::NetworkAddress& address, const Server& server,
                                                kj::TlsContext* tls) {
  return address.connect()
      .then([tls](kj::Own<kj::AsyncIoStream> stream) -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
        if (tls != nullptr) return tls->wrapClient(kj::mv(stream), "localhost");
        return kj::mv(stream);
      })
      .then([kind = server.kind](kj::Own<kj::AsyncIoStream> stream) {
        auto connection = kj::heap<CapnpConnection>();
        // payhostd and bare-buf buffer their end; the client buffers its own, as it must for the
        // gain (bench/README.md). Over TLS the buffer sits above TLS, as in payhostd.
        connection->stream =
            kind == Kind::BARE ? kj::mv(stream) : host::bufferStream(kj::mv(stream));
        connection->client = kj::heap<capnp::TwoPartyClient>(*connection->stream);
        if (kind == Kind::PAYHOSTD) {
          auto request =
              connection->client->bootstrap().castAs<schema::Gateway>().getServiceRequest();
          request.setName("payments.card");
          connection->card = request.send().getService().castAs<CardProcessor>();
        } else {
          connection->card = connection->client->bootstrap().castAs<CardProcessor>();
        }
        return connection;
      });
}

// Cap'n Proto clients (payhostd and bare): one TwoPartyClient per connection, a closed loop on
// each, all on this thread's event loop; or, in the connection-setup case, a closed loop of new
// connections.
LoadResult runCapnpClosedLoop(kj::AsyncIoContext& io, const Server& server, const Case& c,
                              kj::TlsContext* tls, kj::Duration duration,
                              kj::Function<void()> onWindowStart) {
  auto& network = io.provider->getNetwork();
  auto text = c.transport == Transport::UNIX ? kj::str("unix:", server.unixPath)
              : tls != nullptr               ? kj::str("127.0.0.1:", server.tlsPort)
                                             : kj::str("127.0.0.1:", server.port);
  auto address = network.parseAddress(text).wait(io.waitScope);
  uint64_t sequence = 0;
  auto call = [&](CardProcessor::Client& card) {
    auto request = card.authorizeRequest();
    ++sequence;
    fillRequest(request.initRequest(), kj::str("bench-", server.name, "-", sequence), sequence);
    return request.send().then([](auto&& response) {
      KJ_REQUIRE(response.getResult().isApproved(), "authorize was not approved");
    });
  };
  LoadGenerator generator(io.provider->getTimer());
  ClosedLoopOptions options;
  options.concurrency = c.inFlight;
  options.duration = duration;
  options.warmUp = WARM_UP;
  auto started = io.provider->getTimer()
                     .afterDelay(WARM_UP)
                     .then([&]() { onWindowStart(); })
                     .eagerlyEvaluate(nullptr);
  std::vector<kj::Own<CapnpConnection>> connections;
  auto runs = kj::heapArrayBuilder<kj::Promise<LoadResult>>(c.connections);
  if (c.callsPerConnection > 0) {
    // `calls` calls one after another on `card`.
    struct Sequential {
      static kj::Promise<void> run(decltype(call)& call, CardProcessor::Client& card,
                                   uint32_t calls) {
        if (calls == 0) return kj::READY_NOW;
        return call(card).then([&call, &card, calls]() { return run(call, card, calls - 1); });
      }
    };
    for (uint32_t i = 0; i < c.connections; ++i) {
      runs.add(generator.runClosedLoop(options, [&]() {
        return openCapnp(*address, server, tls).then([&](kj::Own<CapnpConnection> connection) {
          auto& card = connection->card;
          return Sequential::run(call, card, c.callsPerConnection).attach(kj::mv(connection));
        });
      }));
    }
  } else {
    for (uint32_t i = 0; i < c.connections; ++i) {
      connections.push_back(openCapnp(*address, server, tls).wait(io.waitScope));
    }
    for (auto& connection : connections) {
      runs.add(
          generator.runClosedLoop(options, [&, &card = connection->card]() { return call(card); }));
    }
  }
  auto results = kj::joinPromises(runs.finish()).wait(io.waitScope);
  LoadResult total;
  for (auto& result : results) {
    total.completed += result.completed;
    total.failed += result.failed;
    total.latency.merge(result.latency);
    total.elapsedSeconds = std::max(total.elapsedSeconds, result.elapsedSeconds);
    if (total.firstError == nullptr) total.firstError = kj::mv(result.firstError);
  }
  total.callsPerSecond =
      total.elapsedSeconds > 0 ? static_cast<double>(total.completed) / total.elapsedSeconds : 0;
  return total;
}

Measurement measure(kj::AsyncIoContext& io, const Server& server, const Case& c, MessageSizes sizes,
                    kj::TlsContext* tls, double seconds) {
  double serverBefore = 0, clientBefore = 0;
  auto onWindowStart = [&]() {
    serverBefore = processCpuMicros(server.pid);
    clientBefore = clientCpuMicros();
  };
  auto duration = std::chrono::nanoseconds(static_cast<int64_t>(seconds * 1e9));
  auto warmUp = std::chrono::nanoseconds(WARM_UP / kj::NANOSECONDS);
  LoadResult result;
  switch (server.kind) {
    case Kind::PAYHOSTD:
    case Kind::BARE:
    case Kind::BARE_BUFFERED:
      // Over TLS but for payhostd's plaintext reference.
      result = runCapnpClosedLoop(
          io, server, c,
          c.transport == Transport::TLS && !server.plaintextReference ? tls : nullptr,
          duration.count() * kj::NANOSECONDS, onWindowStart);
      break;
    case Kind::GRPC: {
#ifdef PAYHOST_BENCH_GRPC
      auto address = c.transport == Transport::UNIX ? std::string("unix:") + server.unixPath.cStr()
                                                    : "127.0.0.1:" + std::to_string(server.port);
      result =
          runGrpcClosedLoop(address, c.connections, c.inFlight, warmUp, duration, onWindowStart);
#endif
      break;
    }
    case Kind::RAW:
      result = runRawClosedLoop(server.port,
                                c.transport == Transport::UNIX ? server.unixPath.asPtr() : "",
                                sizes, c.connections, c.inFlight, warmUp, duration, onWindowStart);
      break;
  }
  double serverCpu = processCpuMicros(server.pid) - serverBefore;
  double clientCpu = clientCpuMicros() - clientBefore;
  Measurement m;
  m.callsPerSecond = result.callsPerSecond;
  m.p50Micros = static_cast<double>(result.latency.percentile(50)) / 1e3;
  m.p99Micros = static_cast<double>(result.latency.percentile(99)) / 1e3;
  m.p999Micros = static_cast<double>(result.latency.percentile(99.9)) / 1e3;
  double calls = static_cast<double>(result.completed);
  m.serverCpuMicrosPerCall = calls > 0 ? serverCpu / calls : 0;
  m.clientCpuMicrosPerCall = calls > 0 ? clientCpu / calls : 0;
  m.callsPerServerCpuSecond = serverCpu > 0 ? calls / (serverCpu / 1e6) : 0;
  m.failed = result.failed;
  KJ_IF_MAYBE (error, result.firstError) {
    m.firstError = error->cStr();
  }
  return m;
}

// --- statistics and output --------------------------------------------------------------------

struct Stat {
  double median = 0, min = 0, max = 0;
};

Stat stat(std::vector<double> values) {
  Stat s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  s.median = n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  s.min = values.front();
  s.max = values.back();
  return s;
}

std::vector<double> column(const std::vector<Measurement>& runs, double Measurement::*field) {
  std::vector<double> values;
  values.reserve(runs.size());
  for (auto& run : runs)
    values.push_back(run.*field);
  return values;
}

// Per round, payhostd's figure over the baseline's, then their median and range.
Stat paired(const std::vector<Measurement>& host, const std::vector<Measurement>& base,
            double Measurement::*field) {
  std::vector<double> ratios;
  for (size_t i = 0; i < host.size() && i < base.size(); ++i) {
    if (base[i].*field > 0) ratios.push_back(host[i].*field / base[i].*field);
  }
  return stat(ratios);
}

struct Field {
  const char* json;
  double Measurement::*member;
};

const Field FIELDS[] = {
    {"calls_per_s", &Measurement::callsPerSecond},
    {"p50_us", &Measurement::p50Micros},
    {"p99_us", &Measurement::p99Micros},
    {"p999_us", &Measurement::p999Micros},
    {"server_cpu_us_per_call", &Measurement::serverCpuMicrosPerCall},
    {"client_cpu_us_per_call", &Measurement::clientCpuMicrosPerCall},
    {"calls_per_server_cpu_s", &Measurement::callsPerServerCpuSecond},
};

std::string machineDescription() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, model;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  long memoryMiB = sysconf(_SC_PHYS_PAGES) / 1024 * sysconf(_SC_PAGE_SIZE) / 1024;
  std::ostringstream out;
  out << std::thread::hardware_concurrency() << " CPUs (" << model << "), " << memoryMiB / 1024
      << " GiB";
  return out.str();
}

std::string jsonEscape(const std::string& text) {
  std::string out;
  for (char ch : text) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) continue;
    out += ch;
  }
  return out;
}

struct Options {
  std::string payhostd, plugin, grpcServer, json, plotData, self, certs;
  int rounds = 5;
  double seconds = 3;
  bool check = false;
  uint32_t shards = 1, connections = 4, callsPerConnection = 1, setupInFlight = 4;
  std::vector<std::string> only;
  std::string otherPayhostd;
  std::vector<std::string> baselines{"bare", "bare-buf", "grpc", "raw"};
};

// The client certificate the suite presents over TLS: CN=bench-client, granted by payhostd's
// [[access]] like any caller.
constexpr const char* CLIENT_NAME = "bench-client";

std::string readText(const std::string& path) {
  std::ifstream in(path);
  KJ_REQUIRE(in.good(), "cannot read; make the certificates with: bash scripts/make-certs.sh DIR",
             CLIENT_NAME, path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The suite's side of TLS: trusts the folder's CA and presents bench-client's certificate.
struct ClientTls {
  kj::Vector<kj::TlsCertificate> trusted;
  kj::Maybe<kj::TlsKeypair> keypair;
  kj::Own<kj::TlsContext> context;
};

kj::Own<ClientTls> makeClientTls(const std::string& certs) {
  auto tls = kj::heap<ClientTls>();
  auto clientKey = readText(certs + "/" + CLIENT_NAME + ".key");
  auto clientCert = readText(certs + "/" + CLIENT_NAME + ".pem");
  tls->trusted.add(kj::TlsCertificate(kj::StringPtr(readText(certs + "/ca.pem").c_str())));
  tls->keypair = kj::TlsKeypair{kj::TlsPrivateKey(kj::StringPtr(clientKey.c_str())),
                                kj::TlsCertificate(kj::StringPtr(clientCert.c_str()))};
  kj::TlsContext::Options options;
  options.useSystemTrustStore = false;
  options.trustedCertificates = tls->trusted;
  options.defaultKeypair = KJ_ASSERT_NONNULL(tls->keypair);
  tls->context = kj::heap<kj::TlsContext>(kj::mv(options));
  return tls;
}

// The performance issue's targets, each a paired ratio from one case of this run.
struct Target {
  const char* what;
  const char* caseName;
  const char* baseline;
  double Measurement::*field;
  // Met when the ratio is at least (`atLeast`) or at most this.
  double limit;
  bool atLeast;
};

const Target TARGETS[] = {
    {"64 in flight, one service: calls per server-CPU-s >= 2x gRPC's",
     "tcp, 64 in flight, 1 connection", "grpc", &Measurement::callsPerServerCpuSecond, 2.0, true},
    {"1 in flight: p50 <= 1.3x the raw TCP floor", "tcp, 1 in flight", "raw",
     &Measurement::p50Micros, 1.3, false},
    {"host cost, 1 in flight: server CPU per call <= 1.05x bare-buf", "tcp, 1 in flight",
     "bare-buf", &Measurement::serverCpuMicrosPerCall, 1.05, false},
    {"host cost, 64 in flight: server CPU per call <= 1.05x bare-buf",
     "tcp, 64 in flight, 1 connection", "bare-buf", &Measurement::serverCpuMicrosPerCall, 1.05,
     false},
    {"TLS, 1 in flight, reused: server CPU per call <= 1.4x plaintext", "tls, 1 in flight",
     "payhostd-plain", &Measurement::serverCpuMicrosPerCall, 1.4, false},
    {"TLS, 64 in flight, reused: server CPU per call <= 1.4x plaintext",
     "tls, 64 in flight, 1 connection", "payhostd-plain", &Measurement::serverCpuMicrosPerCall, 1.4,
     false},
};

int runSuite(const Options& options) {
  char dir[] = "/tmp/payhost-bench-XXXXXX";
  KJ_ASSERT(mkdtemp(dir) != nullptr);
  auto io = kj::setupAsyncIo();
  auto sizes = capnpMessageSizes();
  bool tls = !options.certs.empty();
  kj::Own<ClientTls> clientTls;
  if (tls) clientTls = makeClientTls(options.certs);
  std::vector<Server> servers;
  // Every server started is stopped, also when a measurement throws.
  KJ_DEFER(for (auto& server : servers) stopServer(server));
  auto startPayhostd = [&](kj::StringPtr name, const std::string& path) {
    auto configPath = kj::str(dir, "/", name, ".toml");
    auto adminSocket = kj::str(dir, "/", name, "-admin.sock");
    Server host;
    host.kind = Kind::PAYHOSTD;
    host.name = kj::heapString(name);
    host.unixPath = kj::str(dir, "/", name, ".sock");
    {
      // Warning level: per-call log lines would be a cost the baselines do not pay. The port
      // payhostd picked comes from its admin interface: the plaintext TCP listener first, the
      // TLS one second.
      std::ofstream config(configPath.cStr());
      config << "[host]\nshards = " << options.shards << "\nlog_level = \"warning\"\n[listen]\n"
             << "tcp = [{ address = \"127.0.0.1:0\", insecure = true }"
             << (tls ? ", \"127.0.0.1:0\"" : "") << "]\n"
             << "unix = [{ path = \"" << host.unixPath.cStr() << "\", insecure = true }]\n";
      if (tls) {
        config << "[tls]\ncertificate = \"" << options.certs << "/server.pem\"\nprivate_key = \""
               << options.certs << "/server.key\"\nclient_ca = \"" << options.certs
               << "/ca.pem\"\n[[access]]\nidentity = \"" << CLIENT_NAME
               << "\"\nservices = [\"*\"]\n";
      }
      config << "[[access]]\nidentity = \"anonymous\"\nservices = [\"*\"]\n"
             << "[admin]\nsocket = \"" << adminSocket.cStr()
             << "\"\n[security]\nallow_unsigned = true\n[[plugin]]\npath = \"" << options.plugin
             << "\"\n";
    }
    host.pid = startProcess({path, "--config", configPath.cStr()}, kj::str(dir, "/", name, ".log"));
    host.port =
        waitForPort(io, host.pid, host.name, [&]() { return payhostdPort(io, adminSocket); });
    if (tls) {
      host.tlsPort =
          waitForPort(io, host.pid, host.name, [&]() { return payhostdPort(io, adminSocket, 1); });
    }
    servers.push_back(kj::mv(host));
  };
  startPayhostd("payhostd", options.payhostd);
  if (tls) {
    // payhostd's plaintext listener, as a lane of the TLS cases only.
    Server plain;
    plain.kind = Kind::PAYHOSTD;
    plain.name = kj::str("payhostd-plain");
    plain.pid = servers[0].pid;
    plain.port = servers[0].port;
    plain.unixPath = kj::heapString(servers[0].unixPath);
    plain.plaintextReference = true;
    servers.push_back(kj::mv(plain));
  }
  if (!options.otherPayhostd.empty()) {
    // Another build of payhostd as one more baseline: what a change to the host bought.
    startPayhostd("payhostd-b", options.otherPayhostd);
  }
  auto startBaseline = [&](Kind kind, kj::StringPtr name, std::vector<std::string> args) {
    if (std::find(options.baselines.begin(), options.baselines.end(), name.cStr()) ==
        options.baselines.end()) {
      return false;
    }
    Server server;
    server.kind = kind;
    server.name = kj::heapString(name);
    server.unixPath = kj::str(dir, "/", name, ".sock");
    auto log = kj::str(dir, "/", name, ".log");
    if (kind == Kind::GRPC) {
      args.push_back("--listen");
      args.push_back(std::string("unix:") + server.unixPath.cStr());
    } else {
      args.push_back("--unix");
      args.push_back(server.unixPath.cStr());
    }
    server.pid = startProcess(kj::mv(args), log);
    server.port = waitForPort(io, server.pid, server.name,
                              [&]() { return printedPort(log, server.tlsPort); });
    servers.push_back(kj::mv(server));
    return true;
  };
  startBaseline(Kind::BARE, "bare", {options.self, "--serve-bare", "--plugin", options.plugin});
  std::vector<std::string> bareBuffered{options.self, "--serve-bare", "--buffered", "--plugin",
                                        options.plugin};
  if (tls) {
    // The same TLS server code as payhostd's (host/rpc/tls-server.h), the buffer above it.
    bareBuffered.push_back("--certs");
    bareBuffered.push_back(options.certs);
  }
  startBaseline(Kind::BARE_BUFFERED, "bare-buf", kj::mv(bareBuffered));
  bool haveGrpc = false;
#ifdef PAYHOST_BENCH_GRPC
  if (!options.grpcServer.empty()) {
    // The gRPC server takes one address per flag; TCP comes first and is the port it prints.
    haveGrpc = startBaseline(Kind::GRPC, "grpc", {options.grpcServer, "--listen", "127.0.0.1:0"});
  }
#endif
  startBaseline(Kind::RAW, "raw", {options.self, "--serve-raw"});

  uint32_t n = options.connections;
  std::vector<Case> cases = {
      {"tcp, 1 in flight", 1, 1, Transport::TCP},
      {"tcp, 64 in flight, 1 connection", 64, 1, Transport::TCP},
      {"tcp, 64 in flight x " + std::to_string(n) + " connections", 64, n, Transport::TCP},
      {"unix, 1 in flight", 1, 1, Transport::UNIX},
      {"unix, 64 in flight, 1 connection", 64, 1, Transport::UNIX},
  };
  if (tls) {
    uint32_t calls = options.callsPerConnection;
    cases.push_back({"tls, 1 in flight", 1, 1, Transport::TLS});
    cases.push_back({"tls, 64 in flight, 1 connection", 64, 1, Transport::TLS});
    cases.push_back(
        {(calls == 1 ? std::string("tls, new connection per call, ")
                     : "tls, new connection per " + std::to_string(calls) + " calls, ") +
             std::to_string(options.setupInFlight) + " in flight",
         options.setupInFlight, 1, Transport::TLS, calls});
  }
  if (!options.only.empty()) {
    std::vector<Case> chosen;
    for (auto& c : cases) {
      for (auto& word : options.only) {
        if (c.name.find(word) != std::string::npos) {
          chosen.push_back(c);
          break;
        }
      }
    }
    cases = chosen;
  }

  auto machine = machineDescription();
  printf("payhost-bench-suite: authorize (card-processor) through payhostd and its baselines\n");
  printf("machine: %s; payhostd shards %u; %d rounds of %g s per server and case, interleaved\n",
         machine.c_str(), options.shards, options.rounds, options.seconds);
  printf("raw floor messages: request %zu B, response %zu B (the Cap'n Proto RPC sizes)\n",
         sizes.request, sizes.response);
  printf("gRPC baseline: %s\n", haveGrpc ? "callback server (bench/grpc), not over TLS"
                                         : "NOT MEASURED (not built or --grpc-server not given)");
  printf("TLS: %s\n\n",
         tls ? "TLS 1.3, client certificate (CN=bench-client), payhostd and bare-buf; "
               "payhostd-plain is payhostd's plaintext listener in the same turns"
             : "NOT MEASURED (no --certs DIR; bench/run.sh makes them)");
  fflush(stdout);

  std::ostringstream json;
  json << "{\n  \"benchmark\": \"suite\",\n  \"machine\": \"" << jsonEscape(machine)
       << "\",\n  \"rounds\": " << options.rounds << ",\n  \"seconds\": " << options.seconds
       << ",\n  \"shards\": " << options.shards << ",\n  \"request_bytes\": " << sizes.request
       << ",\n  \"response_bytes\": " << sizes.response << ",\n  \"not_measured\": ["
       << (tls ? "\"grpc over tls\"" : "\"tls: no --certs\"")
       << ", \"payment flow: payhost-flow-bench\"],\n  \"cases\": [";
  // Plot data: one row per case, a column per server ("?" where it is not measured).
  std::ostringstream plot[3];
  const char* plotNames[3] = {"throughput", "cpu", "latency"};
  for (auto& out : plot) {
    out << "case";
    for (auto& server : servers)
      out << "\t" << server.name.cStr();
    out << "\n";
  }
  // payhostd's and each baseline's runs per case, for the targets.
  struct PairedRuns {
    std::string caseName, baseline;
    std::vector<Measurement> host, base;
  };
  std::vector<PairedRuns> pairedRuns;
  bool firstCase = true;
  bool checkFailed = false;
  for (auto& c : cases) {
    std::vector<size_t> lanes;
    for (size_t s = 0; s < servers.size(); ++s) {
      if (measuredIn(servers[s], c)) lanes.push_back(s);
    }
    std::vector<std::vector<Measurement>> runs(servers.size());
    for (int round = 0; round < options.rounds; ++round) {
      for (size_t s : lanes) {
        runs[s].push_back(measure(io, servers[s], c, sizes,
                                  clientTls.get() != nullptr ? clientTls->context.get() : nullptr,
                                  options.seconds));
      }
    }
    printf("%s\n", c.name.c_str());
    if (c.callsPerConnection > 0) {
      printf(
          "  (per connection: connect, %s bootstrap, %u call(s), close; calls/s is connections/s, "
          "latency and CPU are per connection)\n",
          c.transport == Transport::TLS ? "TLS handshake (payhostd-plain: none)," : "",
          c.callsPerConnection);
    }
    printf("  %-14s %20s %9s %9s %9s %10s %10s %22s %s\n", "server", "calls/s (min-max)", "p50 us",
           "p99 us", "p999 us", "server us", "client us", "calls/server-CPU-s", "failed");
    json << (firstCase ? "" : ",") << "\n    {\"case\": \"" << c.name
         << "\", \"in_flight\": " << c.inFlight << ", \"connections\": " << c.connections
         << ", \"transport\": \"" << transportName(c.transport)
         << "\", \"calls_per_connection\": " << c.callsPerConnection;
    firstCase = false;
    std::string label = "\"" + c.name + "\"";
    for (auto& out : plot)
      out << label;
    for (size_t s = 0; s < servers.size(); ++s) {
      auto& r = runs[s];
      if (r.empty()) {
        for (auto& out : plot)
          out << "\t?";
        continue;
      }
      auto cps = stat(column(r, &Measurement::callsPerSecond));
      auto cpu = stat(column(r, &Measurement::callsPerServerCpuSecond));
      uint64_t failed = 0;
      std::string error;
      for (auto& run : r) {
        failed += run.failed;
        if (error.empty()) error = run.firstError;
        if (run.failed > 0 || run.callsPerSecond <= 0) checkFailed = true;
      }
      char range[64];
      snprintf(range, sizeof(range), "%.0f (%.0f-%.0f)", cps.median, cps.min, cps.max);
      printf("  %-14s %20s %9.1f %9.1f %9.1f %10.2f %10.2f %9.0f (%.0f-%.0f) %llu%s%s\n",
             servers[s].name.cStr(), range, stat(column(r, &Measurement::p50Micros)).median,
             stat(column(r, &Measurement::p99Micros)).median,
             stat(column(r, &Measurement::p999Micros)).median,
             stat(column(r, &Measurement::serverCpuMicrosPerCall)).median,
             stat(column(r, &Measurement::clientCpuMicrosPerCall)).median, cpu.median, cpu.min,
             cpu.max, (unsigned long long)failed,
             error.empty() ? "" : " first error: ", error.c_str());
      json << ", \"" << servers[s].name.cStr() << "\": {";
      bool firstField = true;
      for (auto& field : FIELDS) {
        auto value = stat(column(r, field.member));
        json << (firstField ? "" : ", ") << "\"" << field.json << "\": " << value.median << ", \""
             << field.json << "_min\": " << value.min << ", \"" << field.json
             << "_max\": " << value.max;
        firstField = false;
      }
      json << ", \"failed\": " << failed << "}";
      plot[0] << "\t" << cps.median;
      plot[1] << "\t" << cpu.median;
      plot[2] << "\t" << stat(column(r, &Measurement::p50Micros)).median;
    }
    for (auto& out : plot)
      out << "\n";
    // Paired ratios: payhostd against each baseline, round by round.
    json << ", \"ratios\": {";
    bool firstRatio = true;
    for (size_t s : lanes) {
      if (s == 0) continue;
      auto cpu = paired(runs[0], runs[s], &Measurement::callsPerServerCpuSecond);
      auto cpuPerCall = paired(runs[0], runs[s], &Measurement::serverCpuMicrosPerCall);
      auto p50 = paired(runs[0], runs[s], &Measurement::p50Micros);
      auto rate = paired(runs[0], runs[s], &Measurement::callsPerSecond);
      printf(
          "  payhostd/%-14s calls per server-CPU-s %.2fx (%.2f-%.2f), server CPU per call "
          "%.2fx, calls/s %.2fx, p50 %.2fx (%.2f-%.2f)\n",
          servers[s].name.cStr(), cpu.median, cpu.min, cpu.max, cpuPerCall.median, rate.median,
          p50.median, p50.min, p50.max);
      json << (firstRatio ? "" : ", ") << "\"payhostd/" << servers[s].name.cStr()
           << "\": {\"calls_per_server_cpu_s\": " << cpu.median
           << ", \"server_cpu_per_call\": " << cpuPerCall.median
           << ", \"calls_per_s\": " << rate.median << ", \"p50\": " << p50.median << "}";
      firstRatio = false;
      pairedRuns.push_back({c.name, servers[s].name.cStr(), runs[0], runs[s]});
    }
    json << "}}";
    if (c.callsPerConnection > 0 && c.transport == Transport::TLS && runs[1].size() > 0 &&
        servers[1].plaintextReference) {
      auto tlsCpu = stat(column(runs[0], &Measurement::serverCpuMicrosPerCall)).median;
      auto plainCpu = stat(column(runs[1], &Measurement::serverCpuMicrosPerCall)).median;
      printf(
          "  TLS connection setup: %.0f handshakes/s, %.0f us of payhostd CPU per handshake "
          "(%.0f us per TLS connection less %.0f us per plaintext one)\n",
          stat(column(runs[0], &Measurement::callsPerSecond)).median, tlsCpu - plainCpu, tlsCpu,
          plainCpu);
    }
    printf("\n");
    fflush(stdout);
  }
  // The targets, from the cases run.
  printf("targets (issue 7), paired ratios from this run, median (min-max) over rounds:\n");
  json << "\n  ],\n  \"targets\": [";
  bool firstTarget = true;
  for (auto& target : TARGETS) {
    const PairedRuns* found = nullptr;
    for (auto& p : pairedRuns) {
      if (p.caseName == target.caseName && p.baseline == target.baseline) found = &p;
    }
    json << (firstTarget ? "" : ",") << "\n    {\"target\": \"" << target.what << "\"";
    firstTarget = false;
    if (found == nullptr) {
      printf("  %-68s not measured (case \"%s\" or baseline %s not run)\n", target.what,
             target.caseName, target.baseline);
      json << ", \"measured\": false}";
      continue;
    }
    bool failed = false;
    for (auto* runs : {&found->host, &found->base}) {
      for (auto& run : *runs) {
        if (run.failed > 0 || run.callsPerSecond <= 0) failed = true;
      }
    }
    if (failed) {
      printf("  %-68s not measured (calls failed in case \"%s\")\n", target.what, target.caseName);
      json << ", \"measured\": false}";
      continue;
    }
    auto ratio = paired(found->host, found->base, target.field);
    bool met = target.atLeast ? ratio.median >= target.limit : ratio.median <= target.limit;
    printf("  %-68s %.2fx (%.2f-%.2f)  %s\n", target.what, ratio.median, ratio.min, ratio.max,
           met ? "met" : "MISSED");
    json << ", \"measured\": true, \"ratio\": " << ratio.median << ", \"ratio_min\": " << ratio.min
         << ", \"ratio_max\": " << ratio.max << ", \"met\": " << (met ? "true" : "false") << "}";
  }
  printf("  %-68s measured by payhost-flow-bench, not here\n",
         "payment flow: payments per CPU-s >= 5x four gRPC services");
  json << "\n  ]\n}\n";
  if (!options.json.empty()) {
    std::ofstream(options.json) << json.str();
    printf("results written to %s\n", options.json.c_str());
  }
  if (!options.plotData.empty()) {
    for (int i = 0; i < 3; ++i) {
      std::ofstream(options.plotData + "/" + plotNames[i] + ".tsv") << plot[i].str();
    }
    printf("plot data written to %s\n", options.plotData.c_str());
  }
  if (options.check && checkFailed) {
    fprintf(stderr, "payhost-bench-suite: --check: a server failed calls or completed none\n");
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace payhost::bench

int main(int argc, char** argv) {
  CLI::App app{"payhost-bench-suite: payhostd beside bare Cap'n Proto, gRPC and a raw socket"};
  payhost::bench::Options options;
  std::string service = "payments.card", unixPath;
  bool serveBare = false, serveRaw = false, buffered = false;
  app.add_option("--payhostd", options.payhostd, "path of payhostd");
  app.add_option("--plugin", options.plugin, "the card-processor plugin");
  app.add_option("--grpc-server", options.grpcServer, "path of payhost-bench-grpc-server");
  app.add_option("--rounds", options.rounds, "interleaved rounds per case")->capture_default_str();
  app.add_option("--seconds", options.seconds, "seconds per measurement")->capture_default_str();
  app.add_option("--shards", options.shards, "payhostd's event loops")->capture_default_str();
  app.add_option("--connections", options.connections, "connections of the multi-connection case")
      ->capture_default_str();
  app.add_option("--certs", options.certs,
                 "run the TLS cases with the certificates in this folder (made by bash "
                 "scripts/make-certs.sh DIR bench-client)");
  app.add_option("--calls-per-connection", options.callsPerConnection,
                 "calls per new connection in the TLS connection-setup case")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--setup-in-flight", options.setupInFlight,
                 "connections being set up at once in the connection-setup case")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--case", options.only, "run only the cases whose name contains this (repeat)");
  app.add_flag("--check", options.check,
               "exit 1 when any server failed a call or completed none (the smoke test)");
  app.add_option("--payhostd-b", options.otherPayhostd,
                 "another payhostd build measured as one more baseline (payhostd-b)");
  app.add_option("--baseline", options.baselines,
                 "the baselines to run beside payhostd (repeat; default: bare bare-buf grpc raw)");
  app.add_option("--json", options.json, "write the results as JSON to this file");
  app.add_option("--plot-data", options.plotData, "write TSV tables for the plot to this folder");
  app.add_flag("--serve-bare", serveBare, "internal: serve the plugin bare and print the port");
  app.add_flag("--buffered", buffered, "internal: the bare server buffers like payhostd");
  app.add_flag("--serve-raw", serveRaw, "internal: serve the raw floor and print the port");
  app.add_option("--service", service, "internal: the service to serve bare");
  app.add_option("--unix", unixPath, "internal: the unix socket a baseline server listens on");
  CLI11_PARSE(app, argc, argv);
  try {
    if (serveBare) {
      return payhost::bench::serveBare(options.plugin, service, unixPath, buffered, options.certs);
    }
    if (serveRaw) return payhost::bench::serveRaw(unixPath);
    if (options.payhostd.empty() || options.plugin.empty()) {
      fprintf(stderr, "payhost-bench-suite: --payhostd and --plugin are required\n");
      return 2;
    }
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    KJ_ASSERT(n > 0);
    self[n] = '\0';
    options.self = self;
    // Servers run from a temporary folder: paths must not be relative.
    for (auto* path : {&options.payhostd, &options.plugin, &options.grpcServer,
                       &options.otherPayhostd, &options.certs}) {
      if (path->empty()) continue;
      char* absolute = realpath(path->c_str(), nullptr);
      if (absolute == nullptr) {
        fprintf(stderr, "payhost-bench-suite: %s: %s\n", path->c_str(),
                std::system_category().message(errno).c_str());
        return 2;
      }
      *path = absolute;
      free(absolute);
    }
    return payhost::bench::runSuite(options);
  } catch (const kj::Exception& e) {
    fprintf(stderr, "payhost-bench-suite: %s\n", e.getDescription().cStr());
    return 1;
  }
}
