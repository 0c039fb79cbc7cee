// payhost-bench: authorize calls through payhostd beside the same service served bare.
//
//   payhost-bench --payhostd build/host/payhostd
//       --plugin build/plugins/card-processor/card-processor.so [--rounds 5] [--seconds 3]
//
// Two servers run as separate processes on loopback TCP, each with one event loop serving calls:
//   payhostd  the daemon: Gateway -> route (call pin, counters) -> membrane -> plugin
//   bare      this program in `--serve-bare` mode: the plugin's service object, loaded the same
//             way (memfd + Boost.DLL), as the bootstrap capability of a plain Cap'n Proto server
// For each case (1 call in flight; 64 in flight on one connection) the two are measured in turns
// (payhostd, bare, payhostd, bare, ...) so drift on a shared machine hits both. Reported per case:
// calls/s, p50/p99 latency, server CPU per call (utime+stime of the server process, all threads,
// from /proc), calls per server-CPU-second, and the ratio payhostd / bare of the medians.
//
// With `--tls CERTS` (a directory made by `scripts/make-certs.sh CERTS`), the two servers are
// instead payhostd serving TLS with client certificates (the client is CN=merchant-a) and the
// same payhostd config over a plaintext `insecure` listener; each connection is set up once and
// reused for every call, so the figure is TLS's cost per call, not per handshake.

#include "bench/loadgen.h"
#include "bench/server-process.h"
#include "host/loader/plugin-library.h"

#include <payhost/host.capnp.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/compat/tls.h>
#include <kj/debug.h>
#include <kj/filesystem.h>

#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
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

int serveBare(kj::StringPtr pluginPath, kj::StringPtr service) {
  auto io = kj::setupAsyncIo();
  auto library = host::PluginLibrary::load(pluginPath, 1);
  auto& descriptor = library->descriptor();
  BareContext context(io.provider->getTimer(), descriptor);
  char message[512] = {0};
  payhost_error_v1 error{message, sizeof(message)};
  auto instance = static_cast<Plugin*>(descriptor.create(static_cast<Context*>(&context), &error));
  KJ_REQUIRE(instance != nullptr, message);
  {
    capnp::TwoPartyServer server(instance->service(service));
    auto address = io.provider->getNetwork().parseAddress("127.0.0.1:0").wait(io.waitScope);
    auto listener = address->listen();
    printf("listening %u\n", listener->getPort());
    fflush(stdout);
    io.unixEventPort.captureSignal(SIGTERM);
    server.listen(*listener)
        .exclusiveJoin(io.unixEventPort.onSignal(SIGTERM).ignoreResult())
        .wait(io.waitScope);
  }
  descriptor.destroy(instance);
  return 0;
}

// --- server processes -------------------------------------------------------------------------

struct Server {
  pid_t pid = -1;
  uint16_t port = 0;
  kj::String name;
  // Set: connect over TLS with this client context.
  kj::TlsContext* tls = nullptr;
};

Server startServer(kj::StringPtr name, std::vector<std::string> args, kj::StringPtr logPath) {
  return Server{startProcess(kj::mv(args), logPath), 0, kj::heapString(name)};
}

kj::String readText(kj::StringPtr path) {
  auto fs = kj::newDiskFilesystem();
  return fs->getRoot().openFile(fs->getCurrentPath().evalNative(path))->readAllText();
}

// The port the bare server printed ("listening PORT") into its log.
kj::Maybe<uint16_t> barePort(kj::StringPtr logPath) {
  std::ifstream in(logPath.cStr());
  std::string word;
  int port = 0;
  if (in >> word >> port && word == "listening" && port > 0) return port;
  return nullptr;
}

void stopServer(Server& server) {
  kill(server.pid, SIGTERM);
  int status = 0;
  waitpid(server.pid, &status, 0);
}

// --- the client -------------------------------------------------------------------------------

struct Measurement {
  double callsPerSecond;
  double p50Micros;
  double p99Micros;
  double serverCpuMicrosPerCall;
  double callsPerServerCpuSecond;
  uint64_t failed;
};

Measurement measure(kj::AsyncIoContext& io, const Server& server, bool throughGateway,
                    uint32_t inFlight, kj::Duration duration) {
  auto address =
      io.provider->getNetwork().parseAddress(kj::str("127.0.0.1:", server.port)).wait(io.waitScope);
  auto connection = address->connect().wait(io.waitScope);
  if (server.tls != nullptr) {
    connection = server.tls->wrapClient(kj::mv(connection), "localhost").wait(io.waitScope);
  }
  capnp::TwoPartyClient client(*connection);
  CardProcessor::Client card = nullptr;
  if (throughGateway) {
    auto request = client.bootstrap().castAs<schema::Gateway>().getServiceRequest();
    request.setName("payments.card");
    card = request.send().wait(io.waitScope).getService().castAs<CardProcessor>();
  } else {
    card = client.bootstrap().castAs<CardProcessor>();
  }
  uint64_t sequence = 0;
  auto issue = [&]() -> kj::Promise<void> {
    auto request = card.authorizeRequest();
    auto body = request.initRequest();
    body.setMerchantId("merchant-000042");
    auto amount = body.initAmount();
    amount.setMinorUnits(1250 + static_cast<int64_t>(sequence % 1000) * 100);
    amount.setCurrency("EUR");
    body.setCardToken("tok_visa_approve");
    body.setIdempotencyKey(kj::str("bench-", server.name, "-", ++sequence));
    auto metadata = body.initMetadata(2);
    metadata[0].setKey("channel");
    metadata[0].setValue("web");
    metadata[1].setKey("order");
    metadata[1].setValue("A-1001");
    return request.send().ignoreResult();
  };
  LoadGenerator generator(io.provider->getTimer());
  ClosedLoopOptions options;
  options.concurrency = inFlight;
  options.duration = duration;
  options.warmUp = 300 * kj::MILLISECONDS;
  double cpuBefore = 0;
  // The warm-up is excluded from the CPU figure too: sample when measurement starts.
  auto started = io.provider->getTimer()
                     .afterDelay(options.warmUp)
                     .then([&]() { cpuBefore = processCpuMicros(server.pid); })
                     .eagerlyEvaluate(nullptr);
  auto result = generator.runClosedLoop(options, issue).wait(io.waitScope);
  double cpu = processCpuMicros(server.pid) - cpuBefore;
  Measurement m;
  m.callsPerSecond = result.callsPerSecond;
  m.p50Micros = result.latency.percentile(50) / 1e3;
  m.p99Micros = result.latency.percentile(99) / 1e3;
  m.serverCpuMicrosPerCall = result.completed > 0 ? cpu / result.completed : 0;
  m.callsPerServerCpuSecond = cpu > 0 ? result.completed / (cpu / 1e6) : 0;
  m.failed = result.failed;
  return m;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n == 0 ? 0 : n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// Writes a payhostd config into `dir` (`name`.toml, admin socket `name`.sock) and returns its
// path. With `certs`, its listener serves TLS with client certificates from that directory.
kj::String writePayhostdConfig(kj::StringPtr dir, kj::StringPtr name, const std::string& plugin,
                               const std::string& certs) {
  auto configPath = kj::str(dir, "/", name, ".toml");
  // Warning level: per-call log lines would be a cost the bare server does not pay. The port
  // payhostd picked comes from its admin interface.
  std::ofstream config(configPath.cStr());
  config << "[host]\nshards = 1\nlog_level = \"warning\"\n[listen]\n";
  if (certs.empty()) {
    config << "tcp = [{ address = \"127.0.0.1:0\", insecure = true, identity = \"merchant-a\" }]\n";
  } else {
    config << "tcp = [\"127.0.0.1:0\"]\n[tls]\ncertificate = \"" << certs
           << "/server.pem\"\nprivate_key = \"" << certs << "/server.key\"\nclient_ca = \"" << certs
           << "/ca.pem\"\n";
  }
  config << "[[access]]\nidentity = \"merchant-a\"\nservices = [\"payments.card\"]\n"
         << "[admin]\nsocket = \"" << dir.cStr() << "/" << name.cStr()
         << ".sock\"\n[security]\nallow_unsigned = true\n[[plugin]]\npath = \"" << plugin << "\"\n";
  return configPath;
}

int runBenchmark(const std::string& payhostd, const std::string& plugin, const std::string& self,
                 int rounds, int seconds, const std::string& jsonPath, const std::string& certs) {
  char dir[] = "/tmp/payhost-bench-XXXXXX";
  KJ_ASSERT(mkdtemp(dir) != nullptr);
  bool tlsMode = !certs.empty();
  auto io = kj::setupAsyncIo();
  auto configPath = writePayhostdConfig(dir, "payhostd", plugin, certs);
  auto adminSocket = kj::str(dir, "/payhostd.sock");
  auto host = startServer(tlsMode ? "tls" : "payhostd", {payhostd, "--config", configPath.cStr()},
                          kj::str(dir, "/payhostd.log"));
  host.port = waitForPort(io, host.pid, host.name, [&]() { return payhostdPort(io, adminSocket); });
  Server bare;
  kj::Maybe<kj::Own<kj::TlsContext>> clientTls;
  kj::Maybe<kj::TlsKeypair> keypair;
  kj::Vector<kj::TlsCertificate> trusted;
  if (tlsMode) {
    // The baseline: the same daemon config over a plaintext listener.
    auto plainConfig = writePayhostdConfig(dir, "plain", plugin, "");
    auto plainAdmin = kj::str(dir, "/plain.sock");
    bare = startServer("plain", {payhostd, "--config", plainConfig.cStr()},
                       kj::str(dir, "/plain.log"));
    bare.port =
        waitForPort(io, bare.pid, bare.name, [&]() { return payhostdPort(io, plainAdmin); });
    trusted.add(kj::TlsCertificate(readText(kj::str(certs, "/ca.pem"))));
    keypair = kj::TlsKeypair{kj::TlsPrivateKey(readText(kj::str(certs, "/merchant-a.key"))),
                             kj::TlsCertificate(readText(kj::str(certs, "/merchant-a.pem")))};
    kj::TlsContext::Options options;
    options.useSystemTrustStore = false;
    options.trustedCertificates = trusted;
    options.defaultKeypair = KJ_ASSERT_NONNULL(keypair);
    host.tls = clientTls.emplace(kj::heap<kj::TlsContext>(kj::mv(options))).get();
  } else {
    auto bareLog = kj::str(dir, "/bare.log");
    bare = startServer("bare", {self, "--serve-bare", "--plugin", plugin}, bareLog);
    bare.port = waitForPort(io, bare.pid, bare.name, [&]() { return barePort(bareLog); });
  }
  auto hostLabel = tlsMode ? "tls" : "payhostd";
  auto bareLabel = tlsMode ? "plaintext" : "bare";

  struct Case {
    const char* name;
    uint32_t inFlight;
  };
  Case cases[] = {{"1 in flight", 1}, {"64 in flight, 1 connection", 64}};
  std::ostringstream json;
  json << "{\n  \"benchmark\": \"gateway\",\n  \"rounds\": " << rounds
       << ",\n  \"seconds\": " << seconds << ",\n  \"cases\": [";
  if (tlsMode) {
    printf(
        "payhost-bench --tls: authorize through payhostd over TLS (client certificate) vs the "
        "same config over plaintext, connections reused\n");
  } else {
    printf("payhost-bench: authorize through payhostd vs the same plugin served bare\n");
  }
  printf("%d rounds of %d s per server and case, interleaved; medians (min-max)\n\n", rounds,
         seconds);
  bool firstCase = true;
  for (auto& c : cases) {
    std::vector<Measurement> hostRuns, bareRuns;
    for (int round = 0; round < rounds; ++round) {
      hostRuns.push_back(measure(io, host, true, c.inFlight, seconds * kj::SECONDS));
      bareRuns.push_back(measure(io, bare, tlsMode, c.inFlight, seconds * kj::SECONDS));
    }
    auto column = [](const std::vector<Measurement>& runs, double Measurement::*field) {
      std::vector<double> values;
      for (auto& run : runs)
        values.push_back(run.*field);
      return values;
    };
    auto describe = [&](const char* server, const std::vector<Measurement>& runs) {
      auto cps = column(runs, &Measurement::callsPerSecond);
      auto cpu = column(runs, &Measurement::callsPerServerCpuSecond);
      uint64_t failed = 0;
      for (auto& run : runs)
        failed += run.failed;
      printf(
          "  %-9s %9.0f calls/s (%.0f-%.0f)  p50 %7.1f us  p99 %7.1f us  "
          "server %6.1f us CPU/call  %8.0f calls/server-CPU-s (%.0f-%.0f)  failed %llu\n",
          server, median(cps), *std::min_element(cps.begin(), cps.end()),
          *std::max_element(cps.begin(), cps.end()), median(column(runs, &Measurement::p50Micros)),
          median(column(runs, &Measurement::p99Micros)),
          median(column(runs, &Measurement::serverCpuMicrosPerCall)), median(cpu),
          *std::min_element(cpu.begin(), cpu.end()), *std::max_element(cpu.begin(), cpu.end()),
          (unsigned long long)failed);
    };
    printf("%s\n", c.name);
    fflush(stdout);
    describe(hostLabel, hostRuns);
    describe(bareLabel, bareRuns);
    double cpuRatio = median(column(hostRuns, &Measurement::callsPerServerCpuSecond)) /
                      median(column(bareRuns, &Measurement::callsPerServerCpuSecond));
    double p50Ratio = median(column(hostRuns, &Measurement::p50Micros)) /
                      median(column(bareRuns, &Measurement::p50Micros));
    double rateRatio = median(column(hostRuns, &Measurement::callsPerSecond)) /
                       median(column(bareRuns, &Measurement::callsPerSecond));
    double cpuPerCallRatio = median(column(hostRuns, &Measurement::serverCpuMicrosPerCall)) /
                             median(column(bareRuns, &Measurement::serverCpuMicrosPerCall));
    printf(
        "  ratio %s/%s: calls/s %.2fx, calls per server-CPU-s %.2fx, p50 %.2fx, "
        "server CPU per call %.2fx\n\n",
        hostLabel, bareLabel, rateRatio, cpuRatio, p50Ratio, cpuPerCallRatio);

    json << (firstCase ? "" : ",") << "\n    {\"case\": \"" << c.name
         << "\", \"in_flight\": " << c.inFlight;
    firstCase = false;
    for (auto* side : {&hostRuns, &bareRuns}) {
      json << ", \"" << (side == &hostRuns ? hostLabel : bareLabel)
           << "\": {\"calls_per_s\": " << median(column(*side, &Measurement::callsPerSecond))
           << ", \"p50_us\": " << median(column(*side, &Measurement::p50Micros))
           << ", \"p99_us\": " << median(column(*side, &Measurement::p99Micros))
           << ", \"server_cpu_us_per_call\": "
           << median(column(*side, &Measurement::serverCpuMicrosPerCall))
           << ", \"calls_per_server_cpu_s\": "
           << median(column(*side, &Measurement::callsPerServerCpuSecond)) << "}";
    }
    json << ", \"ratio_calls_per_server_cpu_s\": " << cpuRatio << ", \"ratio_p50\": " << p50Ratio
         << "}";
  }
  json << "\n  ]\n}\n";
  stopServer(host);
  stopServer(bare);
  if (!jsonPath.empty()) {
    std::ofstream(jsonPath) << json.str();
    printf("results written to %s\n", jsonPath.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace payhost::bench

int main(int argc, char** argv) {
  CLI::App app{"payhost-bench: authorize through payhostd beside the same service served bare"};
  std::string payhostd, plugin, json;
  std::string service = "payments.card";
  bool serveBare = false;
  int rounds = 3, seconds = 3;
  std::string certs;
  app.add_option("--payhostd", payhostd, "path of payhostd");
  app.add_option("--plugin", plugin, "the card-processor plugin")->required();
  app.add_option("--rounds", rounds, "interleaved rounds per case")->capture_default_str();
  app.add_option("--seconds", seconds, "seconds per measurement")->capture_default_str();
  app.add_option("--json", json, "write the medians as JSON to this file");
  app.add_option("--tls", certs,
                 "compare TLS with plaintext through payhostd; certificates from this directory "
                 "(bash scripts/make-certs.sh DIR)");
  app.add_flag("--serve-bare", serveBare, "internal: serve the plugin bare and print the port");
  app.add_option("--service", service, "internal: the service to serve bare");
  CLI11_PARSE(app, argc, argv);
  try {
    if (serveBare) return payhost::bench::serveBare(plugin.c_str(), service.c_str());
    if (payhostd.empty()) {
      fprintf(stderr, "payhost-bench: --payhostd is required\n");
      return 2;
    }
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    KJ_ASSERT(n > 0);
    self[n] = '\0';
    if (!certs.empty()) {
      std::error_code ignored;
      certs = std::filesystem::absolute(certs, ignored).string();
    }
    return payhost::bench::runBenchmark(payhostd, plugin, self, rounds, seconds, json, certs);
  } catch (const kj::Exception& e) {
    fprintf(stderr, "payhost-bench: %s\n", e.getDescription().cStr());
    return 1;
  }
}
