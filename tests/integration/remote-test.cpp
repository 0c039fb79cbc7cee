// Outbound services, end to end: two payhostd processes. Host A runs the forward fixture, whose
// `test.forward` calls `test.echo` through `Context::service`; A's config maps `test.echo` to
// host B ([remotes.b]), which runs the echo fixture. The test calls A's gateway and reads B's
// Admin status and A's /metrics to see which connections carried the calls. B is killed and
// restarted under A, and A is pointed at a peer that never answers and at one that refuses.
#include <kj/compat/http.h>

#include <gmock/gmock.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "daemon-process.h"

namespace payhost::test {
namespace {

using testing::HasSubstr;

kj::String forwardPlugin(kj::StringPtr file = "fixture-forward.so", kj::StringPtr quota = "") {
  return kj::str("[[plugin]]\npath = \"", fixture(file), "\"\n",
                 quota.size() > 0 ? kj::str("[plugin.quota]\n", quota, "\n") : kj::String(),
                 "[plugin.config]\ntarget = \"test.echo\"\n");
}

// `[remotes.NAME]` serving test.echo at `address`, plus any further `settings` lines; plaintext
// (`insecure = true`, all the test's remotes are on loopback) unless `settings` has a `tls`.
kj::String remote(kj::StringPtr name, kj::StringPtr address, kj::StringPtr settings = "") {
  bool tls = strstr(settings.cStr(), "tls = ") != nullptr;
  return kj::str("[remotes.", name, "]\naddress = \"", address, "\"\nservices = [\"test.echo\"]\n",
                 tls ? "" : "insecure = true\n", settings, "\n");
}

// `tls = { ... }` for a remote: trust `ca`, present `client` (stems of files in `dir`), expect
// the remote's certificate to name `serverName`.
kj::String remoteTls(const TempDir& dir, kj::StringPtr ca, kj::StringPtr client,
                     kj::StringPtr serverName = "localhost") {
  return kj::str("tls = { ca = \"", dir.file(ca), "\", certificate = \"",
                 dir.file(kj::str(client, ".pem")), "\", private_key = \"",
                 dir.file(kj::str(client, ".key")), "\", server_name = \"", serverName, "\" }");
}

// The keepalive timer of A's connection to `port` on 127.0.0.1, from /proc/net/tcp: the "tr"
// column is 2 while the kernel's keepalive timer is armed on that socket, 0 while no timer is.
// Null when there is no such connection.
kj::Maybe<int> keepaliveTimerOf(uint16_t port) {
  auto table = runProcess({"/bin/cat", "/proc/net/tcp"});
  char remote[32];
  snprintf(remote, sizeof(remote), "0100007F:%04X", port);
  for (auto& line : splitLines(table.out)) {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when ...
    std::vector<std::string> fields;
    std::string word;
    for (char c : std::string(line.cStr())) {
      if (c == ' ') {
        if (!word.empty()) fields.push_back(word);
        word.clear();
      } else {
        word += c;
      }
    }
    if (!word.empty()) fields.push_back(word);
    // State 01: established; A's side has the remote's port as its peer.
    if (fields.size() < 6 || fields[2] != remote || fields[3] != "01") continue;
    return atoi(fields[5].substr(0, fields[5].find(':')).c_str());
  }
  return nullptr;
}

// A TCP listener on 127.0.0.1 that never accepts: the kernel completes connects into its
// backlog, and nothing ever answers.
class SilentListener {
public:
  explicit SilentListener(int backlog = 16) : fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    KJ_ASSERT(fd.get() >= 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)));
    KJ_SYSCALL(listen(fd, backlog));
    socklen_t size = sizeof(address);
    KJ_SYSCALL(getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size));
    port = ntohs(address.sin_port);
  }

  kj::AutoCloseFd fd;
  uint16_t port;
};

// A loopback port with nothing listening on it (bound, then closed).
// Connects a socket to 127.0.0.1:`port` and keeps it (to fill a listener's accept queue).
kj::AutoCloseFd connectLoopback(uint16_t port) {
  kj::AutoCloseFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  KJ_SYSCALL(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)));
  return fd;
}

uint16_t closedPort() {
  SilentListener listener;
  return listener.port;
}

class RemoteServices : public EndToEnd {
protected:
  ~RemoteServices() noexcept override {}

  // Host A: the forward fixture, `remotes` tables and /metrics on port 0.
  kj::Own<DaemonProcess> startA(kj::String remotes, kj::String plugins = forwardPlugin()) {
    DaemonOptions options;
    options.extra = kj::str("[metrics]\nlisten = \"127.0.0.1:0\"\n", remotes);
    options.plugins = kj::mv(plugins);
    auto daemon = kj::heap<DaemonProcess>(kj::mv(options));
    metricsAddress =
        KJ_ASSERT_NONNULL(logField(daemon->waitForLog("event=metrics.open"), "address"));
    return daemon;
  }

  kj::Own<DaemonProcess> startB(kj::String plugins = echoPlugin()) {
    DaemonOptions options;
    options.plugins = kj::mv(plugins);
    return kj::heap<DaemonProcess>(kj::mv(options));
  }

  // The value of the sample `line` ("name{labels}") on A's /metrics; fails the test when absent.
  double metric(kj::StringPtr line) {
    auto address = await(io.provider->getNetwork().parseAddress(metricsAddress));
    auto client = kj::newHttpClient(io.provider->getTimer(), table, *address);
    kj::HttpHeaders headers(table);
    auto response = await(client->request(kj::HttpMethod::GET, "/metrics", headers).response);
    EXPECT_EQ(response.statusCode, 200u);
    auto body = s(await(response.body->readAllText()));
    auto prefix = s(line) + " ";
    auto at = body.find("\n" + prefix);
    if (at == std::string::npos) {
      ADD_FAILURE() << "no sample " << prefix << " in\n" << body;
      return -1;
    }
    return std::strtod(body.c_str() + at + 1 + prefix.size(), nullptr);
  }

  kj::HttpHeaderTable table;
  kj::String metricsAddress;
};

void expectForwarded(ScreenResponse& response, kj::StringPtr token, int64_t amount) {
  auto verdict = response.getVerdict();
  EXPECT_EQ(verdict.getScore(), static_cast<uint32_t>(amount));
  auto rules = verdict.getFiredRules();
  ASSERT_EQ(rules.size(), 3u);
  EXPECT_EQ(s(rules[0]), s(token));
  EXPECT_EQ(s(rules[1]), "echo");
  EXPECT_EQ(s(rules[2]), "forwarded");
}

TEST_F(RemoteServices, CallsReachAnotherHostOverPooledReusedConnections) {
  auto b = startB();
  auto a = startA(remote("b", kj::str("tcp:", b->tcpAddress()), "connections_per_shard = 2"));
  // Plaintext to a remote is said at every start.
  EXPECT_THAT(s(a->waitForLog("event=remote.insecure")), HasSubstr("remote=b"));
  EXPECT_THAT(s(a->waitForLog("event=remote.configured")), HasSubstr("tls=off"));
  Connection<schema::Gateway> gateway(io, a->tcpAddress());
  auto forward = gateway.service("test.forward");

  constexpr int ROUNDS = 40;
  constexpr int CONCURRENT = 8;
  for (int round = 0; round < ROUNDS; ++round) {
    kj::Vector<kj::Promise<ScreenResponse>> calls;
    for (int i = 0; i < CONCURRENT; ++i)
      calls.add(screen(forward, kj::str("tok-", i), round * CONCURRENT + i));
    auto responses = await(kj::joinPromises(calls.releaseAsArray()));
    for (int i = 0; i < CONCURRENT; ++i)
      expectForwarded(responses[i], kj::str("tok-", i), round * CONCURRENT + i);
  }

  // B saw exactly A's two connections (the test never connected to B's gateway) carry all calls.
  Connection<schema::Admin> admin(io, b->adminAddress());
  auto statusB = status(admin);
  EXPECT_EQ(statusB.getStatus().getConnectionsOpen(), 2u);
  EXPECT_EQ(statusB.getStatus().getCallsTotal(), uint64_t(ROUNDS * CONCURRENT));
  EXPECT_EQ(metric("payhost_remote_connections_open{remote=\"b\"}"), 2);
  EXPECT_EQ(metric("payhost_remote_connects_total{remote=\"b\"}"), 2);
  EXPECT_EQ(metric("payhost_remote_reconnects_total{remote=\"b\"}"), 0);
  EXPECT_EQ(metric("payhost_remote_calls_total{remote=\"b\"}"), ROUNDS * CONCURRENT);
  EXPECT_EQ(metric("payhost_remote_calls_in_flight{remote=\"b\"}"), 0);
  EXPECT_EQ(metric("payhost_remote_call_failures_total{remote=\"b\",kind=\"disconnected\"}"), 0);
  EXPECT_EQ(a->waitForLogCount("event=remote.connected", 2).size(), 2u);
}

TEST_F(RemoteServices, FailsFastWhileTheRemoteIsDownAndRecoversWithoutARestart) {
  auto b = startB();
  // A call timeout far beyond the test's wait: a failure seen here is not a timeout.
  auto a = startA(remote("b", b->unixAddress(),
                         "call_timeout_ms = 60000\nbackoff_min_ms = 20\nbackoff_max_ms = 100"));
  auto pidA = a->pid();
  Connection<schema::Gateway> gateway(io, a->tcpAddress());
  auto forward = gateway.service("test.forward");
  auto first = await(screen(forward, "before", 1));
  expectForwarded(first, "before", 1);

  b->signal(SIGKILL);
  b->waitForExit(STEP_TIMEOUT);
  a->waitForLog("event=remote.lost");
  for (int i = 0; i < 5; ++i) {
    auto failure = awaitFailure(screen(forward, "down", 2));
    EXPECT_EQ(typeOf(failure), "disconnected") << describe(failure);
    EXPECT_THAT(describe(failure), HasSubstr(s(kj::str("remote b (", b->unixAddress(), "): "))));
  }
  EXPECT_GE(metric("payhost_remote_call_failures_total{remote=\"b\",kind=\"disconnected\"}"), 5);
  EXPECT_EQ(metric("payhost_remote_connections_open{remote=\"b\"}"), 0);

  b->restart();
  // A reconnects on its own within its backoff; calls succeed again on the same process.
  auto deadline = now() + STEP_TIMEOUT;
  bool recovered = false;
  while (!recovered && now() < deadline) {
    auto outcome = await(
        screen(forward, "after", 3)
            .then([](ScreenResponse&&) { return true; }, [](kj::Exception&&) { return false; }));
    if (outcome) {
      recovered = true;
    } else {
      await(io.provider->getTimer().afterDelay(20 * kj::MILLISECONDS));
    }
  }
  ASSERT_TRUE(recovered) << s(a->logText());
  auto after = await(screen(forward, "after", 4));
  expectForwarded(after, "after", 4);
  EXPECT_EQ(a->pid(), pidA);
  a->waitForLog("event=remote.reconnected");
  EXPECT_GE(metric("payhost_remote_reconnects_total{remote=\"b\"}"), 1);
  EXPECT_EQ(metric("payhost_remote_connections_open{remote=\"b\"}"), 1);
}

// Two hosts with certificates from scripts/make-certs.sh: B serves TLS only and grants host-a
// test.echo; A reaches it over TLS with host-a's (or host-c's) certificate.
class TlsRemoteServices : public RemoteServices {
protected:
  static void SetUpTestSuite() {
    certs = new TempDir();
    auto script = kj::str(PAYHOST_SOURCE_DIR, "/scripts/make-certs.sh");
    auto made = runProcess({"/bin/bash", script, certs->file("ours"), "host-a", "host-c"});
    ASSERT_EQ(made.exitCode, 0) << s(made.err);
    // Another CA, which did not issue B's certificate.
    auto other =
        runProcess({"/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", certs->file("other-ca.key"),
                    "-out", certs->file("other-ca.pem"), "-subj", "/CN=other CA", "-days", "3"});
    ASSERT_EQ(other.exitCode, 0) << s(other.err);
  }
  static void TearDownTestSuite() {
    delete certs;
    certs = nullptr;
  }

  kj::Own<DaemonProcess> startTlsB() {
    DaemonOptions options;
    options.listen = kj::str("tcp = [\"127.0.0.1:0\"]");
    options.access = kj::str("[[access]]\nidentity = \"host-a\"\nservices = [\"test.echo\"]\n");
    options.extra = kj::str("[tls]\ncertificate = \"", certs->file("ours/server.pem"),
                            "\"\nprivate_key = \"", certs->file("ours/server.key"),
                            "\"\nclient_ca = \"", certs->file("ours/ca.pem"), "\"\n");
    options.plugins = echoPlugin("report_caller = true");
    return kj::heap<DaemonProcess>(kj::mv(options));
  }

  static TempDir* certs;
};

TempDir* TlsRemoteServices::certs = nullptr;

TEST_F(TlsRemoteServices, CallsGoOverTlsAndTheRemoteSeesThisHostsIdentity) {
  auto b = startTlsB();
  auto address = kj::str("tcp:", b->tcpAddress());
  auto a = startA(remote("b", address, remoteTls(*certs, "ours/ca.pem", "ours/host-a")));
  auto configured = a->waitForLog("event=remote.configured");
  EXPECT_THAT(s(configured), HasSubstr("tls=on"));
  EXPECT_THAT(s(configured), HasSubstr("server_name=localhost"));
  EXPECT_FALSE(a->logged("event=remote.insecure"));
  Connection<schema::Gateway> gateway(io, a->tcpAddress());
  auto forward = gateway.service("test.forward");
  for (int i = 0; i < 3; ++i) {
    auto response = await(screen(forward, "tls", 10 + i));
    auto rules = response.getVerdict().getFiredRules();
    ASSERT_EQ(rules.size(), 4u);
    EXPECT_EQ(s(rules[0]), "tls");
    // B's plugin was told the caller is A, by A's client certificate.
    EXPECT_EQ(s(rules[2]), "host-a");
    EXPECT_EQ(s(rules[3]), "forwarded");
  }
  EXPECT_EQ(metric("payhost_remote_connections_open{remote=\"b\"}"), 1);
  // B saw a TLS client: its plaintext refusals did not happen.
  EXPECT_FALSE(b->logged("event=tls.handshake_failed"));

  // A's identity that B does not grant: B's permission error reaches the plugin's caller.
  auto c = startA(remote("b", address, remoteTls(*certs, "ours/ca.pem", "ours/host-c")));
  Connection<schema::Gateway> gatewayC(io, c->tcpAddress());
  auto forwardC = gatewayC.service("test.forward");
  auto denied = awaitFailure(screen(forwardC, "tls", 1));
  EXPECT_THAT(describe(denied), HasSubstr(s(kj::str("remote b (", address, "): "))));
  EXPECT_THAT(describe(denied), HasSubstr("permission denied: identity 'host-c' may not call "
                                          "service 'test.echo'"));
  EXPECT_THAT(s(b->waitForLog("event=access.denied")), HasSubstr("identity=host-c"));
}

TEST_F(TlsRemoteServices, ARemoteFromAnotherCaIsRefusedNamingTheRemote) {
  auto b = startTlsB();
  auto address = kj::str("tcp:", b->tcpAddress());
  auto a = startA(remote("b", address, remoteTls(*certs, "other-ca.pem", "ours/host-a")));
  Connection<schema::Gateway> gateway(io, a->tcpAddress());
  auto forward = gateway.service("test.forward");
  auto failure = awaitFailure(screen(forward, "tls", 1));
  EXPECT_EQ(typeOf(failure), "disconnected") << describe(failure);
  EXPECT_THAT(describe(failure),
              HasSubstr(s(kj::str("remote b (", address,
                                  "): TLS handshake failed (server_name localhost, ca ",
                                  certs->file("other-ca.pem"), "): "))));
  EXPECT_THAT(describe(failure), HasSubstr("certificate is not trusted"));
  auto logged = a->waitForLog("event=remote.connect_failed");
  EXPECT_THAT(s(logged), HasSubstr("certificate is not trusted"));
  EXPECT_GE(metric("payhost_remote_connect_failures_total{remote=\"b\"}"), 1);
  // B served nothing: A hung up during the handshake.
  EXPECT_FALSE(b->logged("event=access.denied"));

  // The right CA but a name B's certificate does not carry: refused too.
  auto named = startA(
      remote("b", address, remoteTls(*certs, "ours/ca.pem", "ours/host-a", "fx.payhost.test")));
  Connection<schema::Gateway> gatewayNamed(io, named->tcpAddress());
  auto forwardNamed = gatewayNamed.service("test.forward");
  auto misnamed = awaitFailure(screen(forwardNamed, "tls", 1));
  EXPECT_EQ(typeOf(misnamed), "disconnected") << describe(misnamed);
  EXPECT_THAT(describe(misnamed), HasSubstr("TLS handshake failed (server_name fx.payhost.test"));
}

TEST_F(TlsRemoteServices, AWorldReadableClientKeyStopsTheStart) {
  TempDir dir;
  ASSERT_EQ(
      runProcess({"/bin/cp", certs->file("ours/host-a.key"), dir.file("host-a.key")}).exitCode, 0);
  chmod(dir.file("host-a.key").cStr(), 0644);
  auto config = dir.file("payhostd.toml");
  writeFile(config,
            kj::str("[listen]\ntcp = [{ address = \"127.0.0.1:0\", insecure = true }]\n"
                    "[admin]\nsocket = \"",
                    dir.file("a.sock"), "\"\n[remotes.b]\naddress = \"tcp:127.0.0.1:1\"\n",
                    "services = [\"test.echo\"]\ntls = { ca = \"", certs->file("ours/ca.pem"),
                    "\", certificate = \"", certs->file("ours/host-a.pem"), "\", private_key = \"",
                    dir.file("host-a.key"), "\" }\n"));
  auto result = runProcess({PAYHOSTD, "--config", config}, START_TIMEOUT);
  EXPECT_EQ(result.exitCode, 1);
  EXPECT_THAT(
      s(kj::str(result.out, result.err)),
      HasSubstr(s(kj::str("remotes.b.tls.private_key ", dir.file("host-a.key"),
                          ": mode 0644 lets other users read or replace the private key"))));
}

TEST_F(RemoteServices, KeepaliveIsArmedOnRemoteConnectionsAndCanBeTurnedOff) {
  auto b = startB();
  auto port = static_cast<uint16_t>(atoi(b->tcpAddress().cStr() + strlen("127.0.0.1:")));
  struct Case {
    kj::StringPtr setting;
    kj::StringPtr logged;
    int timer;
  };
  for (auto [setting, logged, expected] : {Case{"keepalive_ms = 2000", "keepalive_ms=2000", 2},
                                           Case{"keepalive_ms = 0", "keepalive_ms=0", 0}}) {
    auto a = startA(remote("b", kj::str("tcp:", b->tcpAddress()), setting));
    EXPECT_THAT(s(a->waitForLog("event=remote.configured")), HasSubstr(s(logged)));
    Connection<schema::Gateway> gateway(io, a->tcpAddress());
    auto forward = gateway.service("test.forward");
    auto response = await(screen(forward, "ka", 1));
    expectForwarded(response, "ka", 1);
    // Idle now: with keepalive on, the kernel's keepalive timer is what is pending.
    auto deadline = now() + STEP_TIMEOUT;
    kj::Maybe<int> timer;
    while (now() < deadline) {
      timer = keepaliveTimerOf(port);
      KJ_IF_MAYBE (t, timer) {
        if (*t == expected) break;
      }
      await(io.provider->getTimer().afterDelay(20 * kj::MILLISECONDS));
    }
    EXPECT_EQ(KJ_ASSERT_NONNULL(timer), expected) << s(setting);
  }
}

TEST_F(RemoteServices, ARemoteThatNeverAnswersFailsTheCallAtTheCallTimeout) {
  SilentListener silent;
  auto a =
      startA(remote("silent", kj::str("tcp:127.0.0.1:", silent.port), "call_timeout_ms = 300"));
  Connection<schema::Gateway> gateway(io, a->tcpAddress());
  auto forward = gateway.service("test.forward");
  auto failure = awaitFailure(screen(forward, "tok", 1));
  EXPECT_EQ(typeOf(failure), "overloaded") << describe(failure);
  EXPECT_THAT(describe(failure),
              HasSubstr(s(kj::str("remote silent (tcp:127.0.0.1:", silent.port,
                                  "): no answer within 300 ms (call_timeout_ms)"))));
  EXPECT_EQ(metric("payhost_remote_call_failures_total{remote=\"silent\",kind=\"timeout\"}"), 1);
  EXPECT_EQ(metric("payhost_remote_calls_in_flight{remote=\"silent\"}"), 0);
}

TEST_F(RemoteServices, ARefusedConnectionFailsDisconnectedNamingTheRemote) {
  auto port = closedPort();
  auto a = startA(remote("gone", kj::str("tcp:127.0.0.1:", port)));
  Connection<schema::Gateway> gateway(io, a->tcpAddress());
  auto forward = gateway.service("test.forward");
  for (int i = 0; i < 3; ++i) {
    auto failure = awaitFailure(screen(forward, "tok", 1));
    EXPECT_EQ(typeOf(failure), "disconnected") << describe(failure);
    EXPECT_THAT(describe(failure),
                HasSubstr(s(kj::str("remote gone (tcp:127.0.0.1:", port, "): "))));
  }
  a->waitForLog("event=remote.connect_failed");
  EXPECT_GE(metric("payhost_remote_connect_failures_total{remote=\"gone\"}"), 1);
}

TEST_F(RemoteServices, ACallBeyondMaxCallsInFlightIsRefusedAtOnceAndATimeoutCancelsOnTheRemote) {
  auto b = startB(echoPlugin("slow_token = \"slow\"\nslow_ms = 60000"));
  auto a = startA(remote("b", kj::str("tcp:", b->tcpAddress()),
                         "max_calls_in_flight = 2\ncall_timeout_ms = 2000"));
  Connection<schema::Gateway> gateway(io, a->tcpAddress());
  Connection<schema::Admin> adminB(io, b->adminAddress());
  auto forward = gateway.service("test.forward");
  auto slow1 = screen(forward, "slow", 1);
  auto slow2 = screen(forward, "slow", 2);
  waitForCallsInFlight(adminB, 2);

  auto refused = awaitFailure(screen(forward, "fast", 3));
  EXPECT_EQ(typeOf(refused), "overloaded") << describe(refused);
  EXPECT_THAT(
      describe(refused),
      HasSubstr("remote b (tcp:127.0.0.1:" +
                s(b->tcpAddress().slice(KJ_ASSERT_NONNULL(b->tcpAddress().findLast(':')) + 1)) +
                "): 2 calls in flight on this shard (max_calls_in_flight 2)"));

  // The held calls end at the call timeout, and are cancelled on B.
  for (auto* held : {&slow1, &slow2}) {
    auto failure = awaitFailure(kj::mv(*held));
    EXPECT_EQ(typeOf(failure), "overloaded") << describe(failure);
    EXPECT_THAT(describe(failure), HasSubstr("no answer within 2000 ms (call_timeout_ms)"));
  }
  waitForCallsInFlight(adminB, 0);
  auto answered = await(screen(forward, "fast", 4));
  expectForwarded(answered, "fast", 4);
  EXPECT_EQ(metric("payhost_remote_call_failures_total{remote=\"b\",kind=\"overloaded\"}"), 1);
  EXPECT_EQ(metric("payhost_remote_call_failures_total{remote=\"b\",kind=\"timeout\"}"), 2);
}

TEST_F(RemoteServices, AGreedyPluginCannotTakeAnotherPluginsReservationOrExceedItsLimit) {
  // B holds "slow" calls for 3 s: long enough to look at them, short enough to end by themselves.
  auto b = startB(echoPlugin("slow_token = \"slow\"\nslow_ms = 3000"));
  auto a = startA(
      remote("b", kj::str("tcp:", b->tcpAddress()), "max_calls_in_flight = 2"),
      kj::str(forwardPlugin(), forwardPlugin("fixture-forward-2.so",
                                             "remote_calls_reserve = 1\nremote_calls_limit = 1")));
  Connection<schema::Gateway> gateway(io, a->tcpAddress());
  Connection<schema::Admin> adminB(io, b->adminAddress());
  auto greedy = gateway.service("test.forward");
  auto reserved = gateway.service("test.forward2");

  // Of max_calls_in_flight = 2, forward2 reserved 1: the greedy plugin gets the other one only.
  auto held = screen(greedy, "slow", 1);
  waitForCallsInFlight(adminB, 1);
  auto refused = awaitFailure(screen(greedy, "slow", 2));
  EXPECT_EQ(typeOf(refused), "overloaded") << describe(refused);
  EXPECT_THAT(describe(refused),
              HasSubstr("1 calls in flight on this shard (max_calls_in_flight 2, 1 reserved by "
                        "plugins)"));
  // forward2's reservation is still there for it, and its limit (1) holds too.
  auto mine = screen(reserved, "slow", 3);
  waitForCallsInFlight(adminB, 2);
  auto limited = awaitFailure(screen(reserved, "fast", 4));
  EXPECT_EQ(typeOf(limited), "overloaded") << describe(limited);
  EXPECT_THAT(describe(limited),
              HasSubstr("plugin forward2 has 1 calls in flight to this remote on this shard "
                        "(remote_calls_limit 1)"));
  auto first = await(kj::mv(held));
  expectForwarded(first, "slow", 1);
  auto second = await(kj::mv(mine));
  expectForwarded(second, "slow", 3);
}

TEST_F(RemoteServices, AConnectThatHangsFailsAtTheConnectTimeout) {
  // Backlog 0 admits one connection; with it taken, the kernel drops further connects' SYNs.
  SilentListener full(0);
  auto taken = connectLoopback(full.port);
  auto a = startA(remote("full", kj::str("tcp:127.0.0.1:", full.port),
                         "connect_timeout_ms = 200\ncall_timeout_ms = 60000"));
  Connection<schema::Gateway> gateway(io, a->tcpAddress());
  auto forward = gateway.service("test.forward");
  auto failure = awaitFailure(screen(forward, "tok", 1));
  EXPECT_EQ(typeOf(failure), "disconnected") << describe(failure);
  EXPECT_THAT(describe(failure),
              HasSubstr(s(kj::str("remote full (tcp:127.0.0.1:", full.port,
                                  "): connect timed out after 200 ms (connect_timeout_ms)"))));
}

TEST_F(RemoteServices, AServiceTheRemoteLacksFailsAndIsLookedUpAgainOnTheNextCall) {
  auto b = startB(kj::str(""));
  auto a = startA(remote("b", b->unixAddress()));
  Connection<schema::Gateway> gateway(io, a->tcpAddress());
  auto forward = gateway.service("test.forward");
  auto failure = awaitFailure(screen(forward, "tok", 1));
  EXPECT_EQ(typeOf(failure), "failed") << describe(failure);
  EXPECT_THAT(describe(failure), HasSubstr("remote b ("));
  EXPECT_THAT(describe(failure), HasSubstr("unknown service 'test.echo'"));

  auto deployed =
      runProcess({PAYHOSTCTL, "-s", b->adminSocket(), "deploy", fixture("fixture-echo.so")});
  ASSERT_EQ(deployed.exitCode, 0) << s(deployed.out) << s(deployed.err);
  auto answered = await(screen(forward, "tok", 2));
  expectForwarded(answered, "tok", 2);
  // On the same connection: the service was looked up again, not the host reconnected.
  EXPECT_EQ(metric("payhost_remote_connects_total{remote=\"b\"}"), 1);
}

TEST_F(RemoteServices, APluginProvidingARemoteServiceIsRefusedNamingBoth) {
  DaemonOptions options;
  options.extra = remote("b", "tcp:127.0.0.1:1");
  options.plugins = kj::str(forwardPlugin(), echoPlugin());
  DaemonProcess a(kj::mv(options));
  auto refused = a.waitForLog("event=plugin.refused");
  EXPECT_THAT(s(refused), HasSubstr("fixture-echo.so"));
  EXPECT_THAT(s(refused), HasSubstr("service 'test.echo' of plugin echo 1.0.0 is mapped to remote "
                                    "host 'b' by [remotes.b] services in the config"));
  // The other plugin serves.
  EXPECT_TRUE(a.logged("event=plugin.loaded plugin=forward"));
}

}  // namespace
}  // namespace payhost::test
