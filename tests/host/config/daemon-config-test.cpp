#include "host/config/daemon-config.h"

#include <capnp/message.h>
#include <kj/debug.h>
#include <kj/exception.h>

#include <gtest/gtest.h>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>

namespace payhost::host {
namespace {

namespace fs = std::filesystem;

constexpr kj::StringPtr PATH = "/etc/payhost/payhostd.toml"_kj;
constexpr uint32_t CPUS = 8;

// One string per line, so a test's expected "line:column" can be read off the list.
std::string lines(std::initializer_list<const char*> list) {
  std::string text;
  for (auto line : list) {
    text += line;
    text += '\n';
  }
  return text;
}

// Appended after the line under test so a config is otherwise valid and line numbers stay small.
const std::string REQUIRED = lines({
    "[listen]",
    "tcp = [\"127.0.0.1:0\"]",
    "[admin]",
    "socket = \"admin.sock\"",
});

// TLS listeners need a [tls] table; tests about other keys get this one, appended last so line
// numbers do not move.
const std::string TLS = lines({
    "[tls]",
    "certificate = \"server.pem\"",
    "private_key = \"server.key\"",
    "client_ca = \"ca.pem\"",
});

std::string withTls(const std::string& text) {
  return text.find("[tls]") == std::string::npos ? text + TLS : text;
}

DaemonConfig parse(const std::string& text) {
  auto full = withTls(text);
  return parseDaemonConfig(kj::StringPtr(full.c_str(), full.size()), PATH, CPUS);
}

// The description of the exception parsing `text` throws; fails the test when none is thrown.
std::string parseError(const std::string& text) {
  KJ_IF_MAYBE (exception, kj::runCatchingExceptions([&]() { parse(text); })) {
    return exception->getDescription().cStr();
  }
  ADD_FAILURE() << "no error parsing:\n" << text;
  return "";
}

std::string str(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

// A fresh directory under $TMPDIR, removed with everything in it.
class TempDir {
public:
  TempDir() {
    auto base = fs::temp_directory_path() / "daemon-config-test-XXXXXX";
    std::string pattern = base.native();
    KJ_ASSERT(mkdtemp(pattern.data()) != nullptr, "mkdtemp failed", pattern.c_str());
    // Canonical, so tests compare against what loadDaemonConfig resolves.
    path = fs::canonical(pattern);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  KJ_DISALLOW_COPY(TempDir);

  fs::path write(const char* name, const std::string& text) const {
    auto file = path / name;
    std::ofstream(file) << text;
    return file;
  }

  fs::path path;
};

TEST(DaemonConfig, ParsesEveryField) {
  auto config = parse(lines({
      "[host]",
      "shards = 4",
      "log_level = \"debug\"",
      "log_format = \"json\"",
      "drain_timeout_ms = 2500",
      "[listen]",
      "tcp = [\"127.0.0.1:7400\", \"[::1]:7401\", \"0.0.0.0:0\"]",
      "unix = [\"/run/payhost/payhost.sock\"]",
      "[admin]",
      "socket = \"/run/payhost/admin.sock\"",
      "[[plugin]]",
      "path = \"/opt/payhost/card-processor.so\"",
      "[plugin.config]",
      "latency_ms = 5",
      "currency = \"EUR\"",
      "[plugin.config.issuer]",
      "name = \"test-bank\"",
      "[[plugin]]",
      "path = \"/opt/payhost/fraud.so\"",
      "enabled = false",
  }));

  EXPECT_EQ(str(config.sourcePath), str(PATH));
  EXPECT_EQ(config.shards, 4u);
  EXPECT_EQ(str(config.logLevel), "debug");
  EXPECT_EQ(config.logFormat, LogFormat::JSON);
  EXPECT_EQ(config.drainTimeout, 2500 * kj::MILLISECONDS);

  ASSERT_EQ(config.tcp.size(), 3u);
  EXPECT_EQ(str(config.tcp[0].address), "127.0.0.1:7400");
  EXPECT_EQ(str(config.tcp[1].address), "[::1]:7401");
  EXPECT_EQ(str(config.tcp[2].address), "0.0.0.0:0");
  ASSERT_EQ(config.unix.size(), 1u);
  EXPECT_EQ(str(config.unix[0].address), "/run/payhost/payhost.sock");
  EXPECT_EQ(str(config.adminSocket), "/run/payhost/admin.sock");

  ASSERT_EQ(config.plugins.size(), 2u);
  auto& card = config.plugins[0];
  EXPECT_EQ(str(card.path), "/opt/payhost/card-processor.so");
  EXPECT_TRUE(card.enabled);
  EXPECT_EQ(card.config.integer("latency_ms", 0), 5);
  EXPECT_EQ(str(card.config.string("currency", "")), "EUR");
  EXPECT_EQ(str(card.config.string("issuer.name", "")), "test-bank");
  EXPECT_EQ(str(card.config.section("issuer").string("name", "")), "test-bank");

  auto& fraud = config.plugins[1];
  EXPECT_EQ(str(fraud.path), "/opt/payhost/fraud.so");
  EXPECT_FALSE(fraud.enabled);
  EXPECT_EQ(fraud.config.keys().size(), 0u);
}

TEST(DaemonConfig, AbsentOptionalKeysTakeDefaults) {
  auto config = parse(REQUIRED);

  EXPECT_EQ(config.shards, CPUS);
  EXPECT_EQ(str(config.logLevel), "info");
  EXPECT_EQ(config.logFormat, LogFormat::LOGFMT);
  EXPECT_EQ(config.drainTimeout, 10 * kj::SECONDS);
  EXPECT_EQ(config.unix.size(), 0u);
  EXPECT_EQ(config.plugins.size(), 0u);
}

TEST(DaemonConfig, ZeroShardsMeansOnePerCore) {
  auto text = withTls(lines({"[host]", "shards = 0"}) + REQUIRED);
  EXPECT_EQ(parseDaemonConfig(kj::StringPtr(text.c_str(), text.size()), PATH, 3).shards, 3u);
  EXPECT_EQ(parseDaemonConfig(kj::StringPtr(text.c_str(), text.size()), PATH, 64).shards, 64u);
}

TEST(DaemonConfig, InlineTablesAreAccepted) {
  auto config = parse(lines({
      "listen = { unix = [\"payhost.sock\"] }",
      "admin = { socket = \"admin.sock\" }",
      "plugin = [{ path = \"a.so\", config = { retries = 3, backoff = { ms = 10 } } }]",
  }));

  EXPECT_EQ(str(config.unix[0].address), "/etc/payhost/payhost.sock");
  ASSERT_EQ(config.plugins.size(), 1u);
  EXPECT_EQ(config.plugins[0].config.integer("retries", 0), 3);
  EXPECT_EQ(config.plugins[0].config.integer("backoff.ms", 0), 10);
}

TEST(DaemonConfig, RelativePathsResolveAgainstConfigDirectory) {
  auto config = parse(lines({
      "[listen]",
      "unix = [\"payhost.sock\", \"../../run/payhost/data.sock\", \"/abs/./x.sock\"]",
      "[admin]",
      "socket = \"run/admin.sock\"",
      "[[plugin]]",
      "path = \"plugins/card-processor.so\"",
      "[[plugin]]",
      "path = \"/usr/lib/payhost/fraud.so\"",
  }));

  ASSERT_EQ(config.unix.size(), 3u);
  EXPECT_EQ(str(config.unix[0].address), "/etc/payhost/payhost.sock");
  EXPECT_EQ(str(config.unix[1].address), "/run/payhost/data.sock");
  EXPECT_EQ(str(config.unix[2].address), "/abs/x.sock");
  EXPECT_EQ(str(config.adminSocket), "/etc/payhost/run/admin.sock");
  EXPECT_EQ(str(config.plugins[0].path), "/etc/payhost/plugins/card-processor.so");
  EXPECT_EQ(str(config.plugins[1].path), "/usr/lib/payhost/fraud.so");
}

TEST(DaemonConfig, UnknownKeyNamesFileLineAndKey) {
  EXPECT_EQ(parseError(lines({"[host]", "shards = 2", "shardz = 4"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:3:1: host.shardz: unknown key "
            "(known: shards, log_level, log_format, drain_timeout_ms, data_dir)");
  EXPECT_EQ(parseError(lines({"[hots]"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:1:2: hots: unknown key "
            "(known: host, listen, tls, access, limits, admin, deploy, workers, keys, databases, "
            "metrics, remotes, security, plugin)");
  EXPECT_EQ(parseError(lines({"[listen]", "tcp = [\"a:1\"]", "udp = [\"a:1\"]"})),
            "/etc/payhost/payhostd.toml:3:1: listen.udp: unknown key (known: tcp, unix)");
  EXPECT_EQ(parseError(lines({"[admin]", "  sockett = \"a\""})),
            "/etc/payhost/payhostd.toml:2:3: admin.sockett: unknown key (known: socket, group)");
  EXPECT_EQ(parseError(REQUIRED + lines({
                                      "[[plugin]]",
                                      "path = \"a.so\"",
                                      "[[plugin]]",
                                      "path = \"b.so\"",
                                      "confg = 1",
                                  })),
            "/etc/payhost/payhostd.toml:9:1: plugin[1].confg: unknown key "
            "(known: path, enabled, config, keys, databases, quota, admission)");
}

TEST(DaemonConfig, MetricsListenIsParsedAndChecked) {
  EXPECT_EQ(str(parse(REQUIRED).metricsListen), "");
  EXPECT_EQ(str(parse(lines({"[metrics]", "listen = \"127.0.0.1:0\""}) + REQUIRED).metricsListen),
            "127.0.0.1:0");
  EXPECT_EQ(parseError(lines({"[metrics]", "listen = \"localhost\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:10: metrics.listen: \"localhost\" is not host:port");
  EXPECT_EQ(parseError(lines({"[metrics]", "listen = \"127.0.0.1:70000\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:10: metrics.listen: port 70000 is out of range 0..65535");
  EXPECT_EQ(parseError(lines({"[metrics]", "listen = 9400"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:10: metrics.listen: expected a string, got an integer");
  EXPECT_EQ(parseError(lines({"[metrics]", "port = 9400"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:1: metrics.port: unknown key (known: listen)");
}

TEST(DaemonConfig, PluginAdmissionIsParsedAndChecked) {
  auto config = parse(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "[plugin.admission]",
                                        "max_concurrent = 2", "max_queued = 1"}));
  ASSERT_EQ(config.plugins.size(), 1u);
  EXPECT_EQ(config.plugins[0].admissionMaxConcurrent, 2u);
  EXPECT_EQ(config.plugins[0].admissionMaxQueued, 1u);
  auto defaults = parse(REQUIRED + lines({"[[plugin]]", "path = \"a.so\""}));
  EXPECT_EQ(defaults.plugins[0].admissionMaxConcurrent, 0u);
  EXPECT_EQ(defaults.plugins[0].admissionMaxQueued, 0u);
  EXPECT_EQ(parseError(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "[plugin.admission]",
                                         "max_concurrent = -1"})),
            "/etc/payhost/payhostd.toml:8:18: plugin[0].admission.max_concurrent: "
            "-1 is out of range 0..1000000");
  EXPECT_EQ(parseError(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "[plugin.admission]",
                                         "max_queued = \"1\""})),
            "/etc/payhost/payhostd.toml:8:14: plugin[0].admission.max_queued: "
            "expected an integer, got a string");
  EXPECT_EQ(parseError(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "[plugin.admission]",
                                         "max_waiting = 1"})),
            "/etc/payhost/payhostd.toml:8:1: plugin[0].admission.max_waiting: unknown key "
            "(known: max_concurrent, max_queued)");
  EXPECT_EQ(parseError(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "admission = 3"})),
            "/etc/payhost/payhostd.toml:7:13: plugin[0].admission: "
            "expected a table, got an integer");
}

TEST(DaemonConfig, RemotesAreParsedWithDefaults) {
  auto config = parse(lines({
                          "[remotes.fx-host]",
                          "address = \"tcp:10.0.0.5:7400\"",
                          "services = [\"payments.fx\", \"payments.rates\"]",
                          "connections_per_shard = 2",
                          "connect_timeout_ms = 300",
                          "call_timeout_ms = 700",
                          "max_calls_in_flight = 10",
                          "backoff_min_ms = 20",
                          "backoff_max_ms = 400",
                          "keepalive_ms = 3000",
                          "tls = { ca = \"certs/ca.pem\", certificate = \"/c/a.pem\", "
                          "private_key = \"/c/a.key\" }",
                          "[remotes.ledger-host]",
                          "address = \"unix:run/ledger.sock\"",
                          "services = [\"payments.ledger\"]",
                          "insecure = true",
                      }) +
                      REQUIRED);
  ASSERT_EQ(config.remotes.size(), 2u);
  auto& fx = config.remotes[0];
  EXPECT_EQ(str(fx.name), "fx-host");
  EXPECT_EQ(str(fx.address), "tcp:10.0.0.5:7400");
  ASSERT_EQ(fx.services.size(), 2u);
  EXPECT_EQ(str(fx.services[1]), "payments.rates");
  EXPECT_EQ(fx.connectionsPerShard, 2u);
  EXPECT_EQ(fx.connectTimeout, 300 * kj::MILLISECONDS);
  EXPECT_EQ(fx.callTimeout, 700 * kj::MILLISECONDS);
  EXPECT_EQ(fx.maxCallsInFlight, 10u);
  EXPECT_EQ(fx.backoffMin, 20 * kj::MILLISECONDS);
  EXPECT_EQ(fx.backoffMax, 400 * kj::MILLISECONDS);
  EXPECT_EQ(fx.keepalive, 3 * kj::SECONDS);
  EXPECT_FALSE(fx.insecure);
  auto& fxTls = KJ_ASSERT_NONNULL(fx.tls);
  EXPECT_EQ(str(fxTls.ca), "/etc/payhost/certs/ca.pem");
  EXPECT_EQ(str(fxTls.certificate), "/c/a.pem");
  EXPECT_EQ(str(fxTls.privateKey), "/c/a.key");
  // The host of the address, by default.
  EXPECT_EQ(str(fxTls.serverName), "10.0.0.5");
  auto& ledger = config.remotes[1];
  EXPECT_TRUE(ledger.insecure);
  EXPECT_TRUE(ledger.tls == nullptr);
  EXPECT_EQ(ledger.keepalive, 15 * kj::SECONDS);
  // Relative unix paths resolve against the config file's directory.
  EXPECT_EQ(str(ledger.address), "unix:/etc/payhost/run/ledger.sock");
  EXPECT_EQ(ledger.connectionsPerShard, 1u);
  EXPECT_EQ(ledger.connectTimeout, 1 * kj::SECONDS);
  EXPECT_EQ(ledger.callTimeout, 5 * kj::SECONDS);
  EXPECT_EQ(ledger.maxCallsInFlight, 1024u);
  EXPECT_EQ(ledger.backoffMin, 100 * kj::MILLISECONDS);
  EXPECT_EQ(ledger.backoffMax, 5 * kj::SECONDS);
}

TEST(DaemonConfig, PluginRemoteCallQuotaIsParsed) {
  auto config = parse(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "[plugin.quota]",
                                        "remote_calls_reserve = 2", "remote_calls_limit = 5"}));
  EXPECT_EQ(config.plugins[0].remoteCallsReserve, 2u);
  EXPECT_EQ(config.plugins[0].remoteCallsLimit, 5u);
  auto defaults = parse(REQUIRED + lines({"[[plugin]]", "path = \"a.so\""}));
  EXPECT_EQ(defaults.plugins[0].remoteCallsReserve, 0u);
  EXPECT_EQ(defaults.plugins[0].remoteCallsLimit, 0u);
  EXPECT_EQ(parseError(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "[plugin.quota]",
                                         "remote_calls_limit = -2"})),
            "/etc/payhost/payhostd.toml:8:22: plugin[0].quota.remote_calls_limit: -2 is out of "
            "range 0..1000000");
}

TEST(DaemonConfig, RemoteErrorsNameFileLineAndKey) {
  EXPECT_EQ(parseError(lines({"[remotes.a]", "address = \"unix:/run/a.sock\"", "services = [\"x\"]",
                              "insecure = true", "[remotes.b]", "address = \"tcp:h:2\"",
                              "services = [\"y\", \"x\"]"}) +
                       REQUIRED),
            "/etc/payhost/payhostd.toml:7:18: remotes.b.services[1]: service 'x' is already "
            "mapped to remote 'a'; a service resolves to one remote");
  EXPECT_EQ(
      parseError(lines({"[remotes.a]", "address = \"10.0.0.5:7400\"", "services = []"}) + REQUIRED),
      "/etc/payhost/payhostd.toml:2:11: remotes.a.address: \"10.0.0.5:7400\" is not "
      "tcp:host:port or unix:/path");
  EXPECT_EQ(parseError(lines({"[remotes.a]", "address = \"tcp:h:0\"", "services = []"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:11: remotes.a.address: port 0 cannot be connected to");
  EXPECT_EQ(parseError(lines({"[remotes.a]", "services = [\"x\"]"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:1:1: remotes.a.address: missing required key");
  EXPECT_EQ(parseError(lines({"[remotes.a]", "address = \"tcp:h:1\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:1:1: remotes.a.services: missing required key");
  EXPECT_EQ(
      parseError(lines({"[remotes.a]", "address = \"tcp:h:1\"", "services = [\"x\", \"x\"]"}) +
                 REQUIRED),
      "/etc/payhost/payhostd.toml:3:18: remotes.a.services[1]: service 'x' is listed twice");
  EXPECT_EQ(parseError(lines({"[remotes.a]", "address = \"tcp:h:1\"", "services = [\"x\"]",
                              "connections = 2"}) +
                       REQUIRED),
            "/etc/payhost/payhostd.toml:4:1: remotes.a.connections: unknown key (known: address, "
            "services, connections_per_shard, connect_timeout_ms, call_timeout_ms, "
            "max_calls_in_flight, backoff_min_ms, backoff_max_ms, tls, insecure, keepalive_ms)");
  EXPECT_EQ(parseError(lines({"[remotes.a]", "address = \"tcp:h:1\"", "services = [\"x\"]",
                              "connections_per_shard = 0"}) +
                       REQUIRED),
            "/etc/payhost/payhostd.toml:4:25: remotes.a.connections_per_shard: 0 is out of range "
            "1..64");
  EXPECT_EQ(parseError(lines({"[remotes.a]", "address = \"tcp:127.0.0.1:1\"", "services = [\"x\"]",
                              "insecure = true", "backoff_min_ms = 500", "backoff_max_ms = 100"}) +
                       REQUIRED),
            "/etc/payhost/payhostd.toml:1:1: remotes.a: backoff_min_ms (500) is above "
            "backoff_max_ms (100)");
}

TEST(DaemonConfig, RemotesAreTlsUnlessInsecureOnLoopback) {
  auto remote = [](std::initializer_list<const char*> settings) {
    std::vector<std::string> text = {"[remotes.a]", "services = [\"x\"]"};
    text.insert(text.end(), settings.begin(), settings.end());
    std::string joined;
    for (auto& line : text)
      joined += line + "\n";
    return joined + REQUIRED;
  };
  EXPECT_EQ(parseError(remote({"address = \"tcp:10.0.0.5:7400\""})),
            "/etc/payhost/payhostd.toml:1:1: remotes.a.tls: missing required key: connections "
            "to a remote are TLS (tls = { ca = \"...\", certificate = \"...\", private_key = "
            "\"...\" }); plaintext needs insecure = true, for a loopback or unix development "
            "remote");
  EXPECT_EQ(parseError(remote({"address = \"tcp:10.0.0.5:7400\"", "insecure = true"})),
            "/etc/payhost/payhostd.toml:1:1: remotes.a.insecure: insecure = true is allowed only "
            "for a loopback address (127.0.0.1, ::1, localhost) or a unix socket, not "
            "\"tcp:10.0.0.5:7400\"; configure tls = { ... } instead");
  EXPECT_EQ(parseError(remote({"address = \"tcp:127.0.0.1:7400\"", "insecure = true",
                               "tls = { ca = \"a\", certificate = \"b\", private_key = \"c\" }"})),
            "/etc/payhost/payhostd.toml:1:1: remotes.a.insecure: insecure = true and tls = { ... "
            "} exclude each other");
  EXPECT_EQ(
      parseError(remote({"address = \"tcp:h:1\"", "tls = { ca = \"a\", certificate = \"b\" }"})),
      "/etc/payhost/payhostd.toml:4:7: remotes.a.tls.private_key: missing required key");
  EXPECT_EQ(parseError(remote({"address = \"unix:/run/b.sock\"",
                               "tls = { ca = \"a\", certificate = \"b\", private_key = \"c\" }"})),
            "/etc/payhost/payhostd.toml:1:1: remotes.a.tls.server_name: missing required key (a "
            "unix address has no host name to verify the remote's certificate against)");
  EXPECT_EQ(parseError(remote({"address = \"tcp:h:1\"",
                               "tls = { ca = \"a\", certificate = \"b\", private_key = \"c\", "
                               "verify = false }"})),
            "/etc/payhost/payhostd.toml:4:57: remotes.a.tls.verify: unknown key (known: ca, "
            "certificate, private_key, server_name)");
  EXPECT_EQ(parseError(remote(
                {"address = \"unix:/run/b.sock\"", "insecure = true", "keepalive_ms = 500"})),
            "/etc/payhost/payhostd.toml:5:16: remotes.a.keepalive_ms: 500 is below 1000 (the "
            "kernel counts keepalive in seconds); 0 turns it off");
  auto unixTls = parse(remote({"address = \"unix:/run/b.sock\"",
                               "tls = { ca = \"a\", certificate = \"b\", private_key = \"c\", "
                               "server_name = \"b.payhost.internal\" }",
                               "keepalive_ms = 0"}));
  EXPECT_EQ(str(KJ_ASSERT_NONNULL(unixTls.remotes[0].tls).serverName), "b.payhost.internal");
  EXPECT_EQ(unixTls.remotes[0].keepalive, 0 * kj::SECONDS);
  auto localhost = parse(remote({"address = \"tcp:localhost:7400\"", "insecure = true"}));
  EXPECT_TRUE(localhost.remotes[0].insecure);
}

TEST(DaemonConfig, FirstErrorInFileIsReported) {
  // toml++ sorts keys by name; the message must still point at the earlier line.
  EXPECT_EQ(parseError(lines({"[host]", "zzz = 1", "aaa = 2"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:1: host.zzz: unknown key "
            "(known: shards, log_level, log_format, drain_timeout_ms, data_dir)");
}

TEST(DaemonConfig, WrongTypeNamesExpectedAndActual) {
  EXPECT_EQ(parseError(lines({"[host]", "shards = \"four\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:10: host.shards: expected an integer, got a string");
  EXPECT_EQ(parseError(lines({"[host]", "drain_timeout_ms = 1.5"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:20: host.drain_timeout_ms: "
            "expected an integer, got a float");
  EXPECT_EQ(parseError(lines({"[host]", "log_level = 3"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:13: host.log_level: expected a string, got an integer");
  EXPECT_EQ(parseError(lines({"host = 1"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:1:8: host: expected a table, got an integer");
  EXPECT_EQ(parseError(lines({"[listen]", "tcp = \"127.0.0.1:7400\""})),
            "/etc/payhost/payhostd.toml:2:7: listen.tcp: expected an array, got a string");
  EXPECT_EQ(parseError(lines({"[listen]", "tcp = [\"127.0.0.1:7400\", 7401]"})),
            "/etc/payhost/payhostd.toml:2:26: listen.tcp[1]: expected a string or a table, got an "
            "integer");
  EXPECT_EQ(parseError(lines({"[listen]", "unix = [true]"})),
            "/etc/payhost/payhostd.toml:2:9: listen.unix[0]: expected a string or a table, got a "
            "boolean");
  EXPECT_EQ(parseError(lines({"[admin]", "socket = 1979-05-27"})),
            "/etc/payhost/payhostd.toml:2:10: admin.socket: expected a string, got a date");
  EXPECT_EQ(parseError(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "enabled = \"yes\""})),
            "/etc/payhost/payhostd.toml:7:11: plugin[0].enabled: "
            "expected a boolean, got a string");
  EXPECT_EQ(parseError(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "config = 5"})),
            "/etc/payhost/payhostd.toml:7:10: plugin[0].config: expected a table, got an integer");
}

TEST(DaemonConfig, PluginMustBeAnArrayOfTables) {
  EXPECT_EQ(parseError(REQUIRED + lines({"[plugin]", "path = \"a.so\""})),
            "/etc/payhost/payhostd.toml:5:1: plugin: "
            "expected an array of tables ([[plugin]]), got a table");
  EXPECT_EQ(parseError(lines({"plugin = [\"a.so\"]"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:1:11: plugin[0]: expected a table, got a string");
}

TEST(DaemonConfig, OutOfRangeNamesValueAndRange) {
  EXPECT_EQ(parseError(lines({"[host]", "shards = 999"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:10: host.shards: 999 is out of range 0..256");
  EXPECT_EQ(parseError(lines({"[host]", "shards = -1"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:10: host.shards: -1 is out of range 0..256");
  EXPECT_EQ(parseError(lines({"[host]", "drain_timeout_ms = 600001"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:20: host.drain_timeout_ms: "
            "600001 is out of range 0..600000");

  auto edges = lines({"[host]", "shards = 256", "drain_timeout_ms = 600000"}) + REQUIRED;
  auto config = parse(edges);
  EXPECT_EQ(config.shards, 256u);
  EXPECT_EQ(config.drainTimeout, 600 * kj::SECONDS);
  EXPECT_EQ(parse(lines({"[host]", "drain_timeout_ms = 0"}) + REQUIRED).drainTimeout,
            0 * kj::SECONDS);
}

TEST(DaemonConfig, UnknownEnumValueListsTheChoices) {
  EXPECT_EQ(parseError(lines({"[host]", "log_level = \"verbose\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:13: host.log_level: "
            "\"verbose\" is not one of debug, info, warning, error");
  EXPECT_EQ(parseError(lines({"[host]", "log_format = \"xml\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:14: host.log_format: \"xml\" is not one of logfmt, json");

  for (auto level : {"debug", "info", "warning", "error"}) {
    auto text = lines({"[host]"}) + "log_level = \"" + level + "\"\n" + REQUIRED;
    EXPECT_EQ(str(parse(text).logLevel), level);
  }
}

TEST(DaemonConfig, MissingRequiredKeyPointsAtEnclosingTable) {
  EXPECT_EQ(parseError(REQUIRED +
                       lines({"[[plugin]]", "path = \"a.so\"", "[[plugin]]", "enabled = false"})),
            "/etc/payhost/payhostd.toml:7:1: plugin[1].path: missing required key");
  EXPECT_EQ(parseError(lines({"[listen]", "tcp = [\"127.0.0.1:0\"]"})),
            "/etc/payhost/payhostd.toml:1:1: admin.socket: missing required key");
  EXPECT_EQ(parseError(lines({"[listen]", "tcp = [\"127.0.0.1:0\"]", "[admin]"})),
            "/etc/payhost/payhostd.toml:3:1: admin.socket: missing required key");
}

TEST(DaemonConfig, AtLeastOneListenAddressIsRequired) {
  EXPECT_EQ(parseError(lines({"[admin]", "socket = \"admin.sock\""})),
            "/etc/payhost/payhostd.toml:1:1: listen: "
            "at least one tcp or unix address is required");
  EXPECT_EQ(parseError(lines({"[admin]", "socket = \"admin.sock\"", "[listen]", "tcp = []"})),
            "/etc/payhost/payhostd.toml:3:1: listen: "
            "at least one tcp or unix address is required");
}

TEST(DaemonConfig, TcpAddressMustBeHostPort) {
  auto errorFor = [](const char* address) {
    return parseError(lines({"[listen]"}) + "tcp = [\"" + address + "\"]\n" +
                      lines({"[admin]", "socket = \"a\""}));
  };
  for (auto address : {"localhost", ":7400", "localhost:", "localhost:http", "::1:7400", "[::1]",
                       "[::1]7400", "[]:7400", "host:123456", "ho st:1"}) {
    EXPECT_EQ(errorFor(address), "/etc/payhost/payhostd.toml:2:8: listen.tcp[0]: \"" +
                                     std::string(address) + "\" is not host:port");
  }
  EXPECT_EQ(errorFor("127.0.0.1:65536"),
            "/etc/payhost/payhostd.toml:2:8: listen.tcp[0]: port 65536 is out of range 0..65535");

  for (auto address : {"localhost:0", "example.com:65535", "[::1]:7400", "[fe80::1%eth0]:1"}) {
    auto text = lines({"[listen]"}) + "tcp = [\"" + address + "\"]\n" +
                lines({"[admin]", "socket = \"a\""});
    EXPECT_EQ(str(parse(text).tcp[0].address), address);
  }
}

TEST(DaemonConfig, EmptyPathIsRefused) {
  EXPECT_EQ(parseError(lines({"[listen]", "unix = [\"\"]", "[admin]", "socket = \"a\""})),
            "/etc/payhost/payhostd.toml:2:9: listen.unix[0]: must not be empty");
  EXPECT_EQ(parseError(REQUIRED + lines({"[[plugin]]", "path = \"\""})),
            "/etc/payhost/payhostd.toml:6:8: plugin[0].path: must not be empty");
}

TEST(DaemonConfig, SyntaxErrorNamesFileLineAndColumn) {
  auto message = parseError(lines({"[host]", "shards = = 4"}) + REQUIRED);
  EXPECT_EQ(message.rfind("/etc/payhost/payhostd.toml:2:10: ", 0), 0u) << message;
  EXPECT_GT(message.size(), std::string("/etc/payhost/payhostd.toml:2:10: ").size());
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;

  message = parseError(lines({"[host]", "shards = 1", "shards = 2"}) + REQUIRED);
  EXPECT_EQ(message.rfind("/etc/payhost/payhostd.toml:3:", 0), 0u) << message;
}

TEST(DaemonConfig, DataDirDefaultsBesideTheConfigFile) {
  EXPECT_EQ(str(parse(REQUIRED).dataDir), "/etc/payhost/payhost-data");
  EXPECT_EQ(str(parse(lines({"[host]", "data_dir = \"state/payhost\""}) + REQUIRED).dataDir),
            "/etc/payhost/state/payhost");
  EXPECT_EQ(str(parse(lines({"[host]", "data_dir = \"/var/lib/payhost/\""}) + REQUIRED).dataDir),
            "/var/lib/payhost/");
}

TEST(DaemonConfig, DataDirMustBeANonEmptyString) {
  EXPECT_EQ(parseError(lines({"[host]", "data_dir = 5"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:12: host.data_dir: expected a string, got an integer");
  EXPECT_EQ(parseError(lines({"[host]", "data_dir = \"\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:12: host.data_dir: must not be empty");
}

TEST(DaemonConfig, DeployKeysTakeDefaultsWhenAbsent) {
  auto config = parse(REQUIRED);
  EXPECT_EQ(config.deployDrainTimeout, 5 * kj::SECONDS);
  EXPECT_EQ(config.readyTimeout, 10 * kj::SECONDS);
  EXPECT_EQ(config.unloadTimeout, 2 * kj::SECONDS);
  EXPECT_EQ(config.canaryWindow, 10 * kj::SECONDS);
  EXPECT_EQ(config.canaryMinCalls, 50u);
  EXPECT_EQ(config.canaryMaxErrorRate, 0.01);
  EXPECT_EQ(config.canaryMaxP99, 250 * kj::MILLISECONDS);
  // An empty table changes nothing either.
  EXPECT_EQ(parse(lines({"[deploy]"}) + REQUIRED).deployDrainTimeout, 5 * kj::SECONDS);
}

TEST(DaemonConfig, ParsesEveryDeployKey) {
  auto config = parse(lines({
                          "[deploy]",
                          "drain_timeout_ms = 1500",
                          "ready_timeout_ms = 2500",
                          "unload_timeout_ms = 300",
                          "canary_window_ms = 60000",
                          "canary_min_calls = 200",
                          "canary_max_error_rate = 0.025",
                          "canary_max_p99_ms = 40",
                      }) +
                      REQUIRED);
  EXPECT_EQ(config.deployDrainTimeout, 1500 * kj::MILLISECONDS);
  EXPECT_EQ(config.readyTimeout, 2500 * kj::MILLISECONDS);
  EXPECT_EQ(config.unloadTimeout, 300 * kj::MILLISECONDS);
  EXPECT_EQ(config.canaryWindow, 60 * kj::SECONDS);
  EXPECT_EQ(config.canaryMinCalls, 200u);
  EXPECT_EQ(config.canaryMaxErrorRate, 0.025);
  EXPECT_EQ(config.canaryMaxP99, 40 * kj::MILLISECONDS);
  // The host's drain deadline is a different key.
  EXPECT_EQ(config.drainTimeout, 10 * kj::SECONDS);

  // An error rate may be written as an integer; the edges of each range are accepted.
  auto edges = parse(lines({
                         "[deploy]",
                         "drain_timeout_ms = 0",
                         "ready_timeout_ms = 600000",
                         "canary_min_calls = 0",
                         "canary_max_error_rate = 1",
                     }) +
                     REQUIRED);
  EXPECT_EQ(edges.deployDrainTimeout, 0 * kj::SECONDS);
  EXPECT_EQ(edges.readyTimeout, 600 * kj::SECONDS);
  EXPECT_EQ(edges.canaryMinCalls, 0u);
  EXPECT_EQ(edges.canaryMaxErrorRate, 1.0);
  EXPECT_EQ(parse(lines({"[deploy]", "canary_max_error_rate = 0"}) + REQUIRED).canaryMaxErrorRate,
            0.0);
}

TEST(DaemonConfig, DeployValuesOutOfRangeNameValueAndRange) {
  EXPECT_EQ(parseError(lines({"[deploy]", "drain_timeout_ms = -1"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:20: deploy.drain_timeout_ms: "
            "-1 is out of range 0..600000");
  EXPECT_EQ(parseError(lines({"[deploy]", "ready_timeout_ms = 600001"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:20: deploy.ready_timeout_ms: "
            "600001 is out of range 0..600000");
  EXPECT_EQ(parseError(lines({"[deploy]", "unload_timeout_ms = 9999999"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:21: deploy.unload_timeout_ms: "
            "9999999 is out of range 0..600000");
  EXPECT_EQ(parseError(lines({"[deploy]", "canary_window_ms = -5"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:20: deploy.canary_window_ms: "
            "-5 is out of range 0..600000");
  EXPECT_EQ(parseError(lines({"[deploy]", "canary_min_calls = -3"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:20: deploy.canary_min_calls: "
            "-3 is out of range 0..1000000000");
  EXPECT_EQ(parseError(lines({"[deploy]", "canary_max_error_rate = 1.5"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:25: deploy.canary_max_error_rate: "
            "1.5 is out of range 0..1");
  EXPECT_EQ(parseError(lines({"[deploy]", "canary_max_error_rate = -0.1"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:25: deploy.canary_max_error_rate: "
            "-0.1 is out of range 0..1");
  EXPECT_EQ(parseError(lines({"[deploy]", "canary_max_error_rate = nan"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:25: deploy.canary_max_error_rate: "
            "nan is out of range 0..1");
  EXPECT_EQ(parseError(lines({"[deploy]", "canary_max_p99_ms = 600001"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:21: deploy.canary_max_p99_ms: "
            "600001 is out of range 0..600000");
}

TEST(DaemonConfig, DeployValuesOfWrongTypeNameExpectedAndActual) {
  EXPECT_EQ(parseError(lines({"[deploy]", "ready_timeout_ms = \"5s\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:20: deploy.ready_timeout_ms: "
            "expected an integer, got a string");
  EXPECT_EQ(parseError(lines({"[deploy]", "drain_timeout_ms = 2.5"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:20: deploy.drain_timeout_ms: "
            "expected an integer, got a float");
  EXPECT_EQ(parseError(lines({"[deploy]", "canary_min_calls = true"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:20: deploy.canary_min_calls: "
            "expected an integer, got a boolean");
  EXPECT_EQ(parseError(lines({"[deploy]", "canary_max_error_rate = \"1%\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:25: deploy.canary_max_error_rate: "
            "expected a number, got a string");
  EXPECT_EQ(parseError(lines({"deploy = 3"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:1:10: deploy: expected a table, got an integer");
  EXPECT_EQ(parseError(lines({"[deploy]", "canary_percent = 10"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:1: deploy.canary_percent: unknown key (known: "
            "drain_timeout_ms, ready_timeout_ms, unload_timeout_ms, canary_window_ms, "
            "canary_min_calls, canary_max_error_rate, canary_max_p99_ms)");
}

TEST(DaemonConfig, ParsesDatabasesAndPluginGrants) {
  auto config = parse(REQUIRED + lines({
                                     "[databases.ledger]",
                                     "driver = \"sqlite\"",
                                     "[databases.shared]",
                                     "driver = \"postgresql\"",
                                     "conninfo = \"host=/run/pg dbname=pay\"",
                                     "min_connections = 1",
                                     "max_connections = 6",
                                     "lease_wait_ms = 250",
                                     "[databases.local]",
                                     "driver = \"sqlite\"",
                                     "path = \"db/local.db\"",
                                     "[[plugin]]",
                                     "path = \"a.so\"",
                                     "databases = [\"ledger\", \"shared\"]",
                                     "[plugin.quota]",
                                     "databases_reserve = 1",
                                     "databases_limit = 3",
                                 }));
  ASSERT_EQ(config.databases.size(), 3u);
  auto& ledger = config.databases[0];
  EXPECT_EQ(str(ledger.name), "ledger");
  EXPECT_TRUE(ledger.driver == DatabaseDriver::SQLITE);
  EXPECT_EQ(str(ledger.path), "/etc/payhost/payhost-data/ledger.sqlite");
  EXPECT_EQ(ledger.minConnections, 0u);
  EXPECT_EQ(ledger.maxConnections, 4u);
  EXPECT_EQ(ledger.leaseWait, 100 * kj::MILLISECONDS);
  auto& shared = config.databases[1];
  EXPECT_TRUE(shared.driver == DatabaseDriver::POSTGRESQL);
  EXPECT_EQ(str(shared.conninfo), "host=/run/pg dbname=pay");
  EXPECT_EQ(shared.minConnections, 1u);
  EXPECT_EQ(shared.maxConnections, 6u);
  EXPECT_EQ(shared.leaseWait, 250 * kj::MILLISECONDS);
  EXPECT_FALSE(shared.scale);
  EXPECT_EQ(str(config.databases[2].path), "/etc/payhost/db/local.db");
  ASSERT_EQ(config.plugins[0].databases.size(), 2u);
  EXPECT_EQ(str(config.plugins[0].databases[1]), "shared");
  EXPECT_EQ(config.plugins[0].databasesReserve, 1u);
  EXPECT_EQ(config.plugins[0].databasesLimit, 3u);
}

TEST(DaemonConfig, ParsesDatabaseScalingAndRefusesAGrowWaitBeyondTheLeaseWait) {
  auto config = parse(REQUIRED + lines({"[databases.ledger]", "driver = \"sqlite\"",
                                        "min_connections = 1", "max_connections = 8",
                                        "scale = true", "grow_after_ms = 15", "idle_ms = 2000"}));
  ASSERT_EQ(config.databases.size(), 1u);
  EXPECT_TRUE(config.databases[0].scale);
  EXPECT_EQ(config.databases[0].growAfter, 15 * kj::MILLISECONDS);
  EXPECT_EQ(config.databases[0].idleTimeout, 2000 * kj::MILLISECONDS);
  EXPECT_EQ(parseError(lines({"[databases.ledger]", "driver = \"sqlite\"", "scale = true",
                              "lease_wait_ms = 50", "grow_after_ms = 50"}) +
                       REQUIRED),
            "/etc/payhost/payhostd.toml:1:1: databases.ledger.grow_after_ms: must be below "
            "lease_wait_ms (50) when scale = true: a lease would fail OVERLOADED before the pool "
            "grows");
  EXPECT_EQ(
      parseError(lines({"[databases.ledger]", "driver = \"sqlite\"", "idle_ms = 0"}) + REQUIRED),
      "/etc/payhost/payhostd.toml:3:11: databases.ledger.idle_ms: 0 is out of range "
      "1..600000");
  EXPECT_EQ(
      parseError(lines({"[databases.ledger]", "driver = \"sqlite\"", "scale = 1"}) + REQUIRED),
      "/etc/payhost/payhostd.toml:3:9: databases.ledger.scale: expected a boolean, got an "
      "integer");
}

TEST(DaemonConfig, DatabaseErrorsNameTheKey) {
  EXPECT_EQ(parseError(lines({"[databases.ledger]", "path = \"x.db\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:1:1: databases.ledger.driver: missing required key");
  EXPECT_EQ(parseError(lines({"[databases.ledger]", "driver = \"mysql\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:10: databases.ledger.driver: \"mysql\" is not one of "
            "sqlite, postgresql");
  EXPECT_EQ(parseError(lines({"[databases.ledger]", "driver = \"postgresql\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:1:1: databases.ledger.conninfo: missing required key "
            "(driver = \"postgresql\")");
  EXPECT_EQ(parseError(lines({"[databases.ledger]", "driver = \"sqlite\"", "conninfo = \"x\""}) +
                       REQUIRED),
            "/etc/payhost/payhostd.toml:1:1: databases.ledger.conninfo: only for driver = "
            "\"postgresql\"");
  EXPECT_EQ(
      parseError(lines({"[databases.ledger]", "driver = \"sqlite\"", "max_conns = 2"}) + REQUIRED),
      "/etc/payhost/payhostd.toml:3:1: databases.ledger.max_conns: unknown key (known: "
      "driver, path, conninfo, min_connections, max_connections, lease_wait_ms, scale, "
      "grow_after_ms, idle_ms)");
  EXPECT_EQ(parseError(lines({"[databases.ledger]", "driver = \"sqlite\"", "max_connections = 0"}) +
                       REQUIRED),
            "/etc/payhost/payhostd.toml:3:19: databases.ledger.max_connections: 0 is out of range "
            "1..1024");
  EXPECT_EQ(parseError(lines({"[databases.ledger]", "driver = \"sqlite\"", "min_connections = 5",
                              "max_connections = 2"}) +
                       REQUIRED),
            "/etc/payhost/payhostd.toml:1:1: databases.ledger: min_connections (5) is above "
            "max_connections (2)");
  EXPECT_EQ(
      parseError(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "databases = \"x\""})),
      "/etc/payhost/payhostd.toml:7:13: plugin[0].databases: expected an array, got a string");
  EXPECT_EQ(parseError(REQUIRED + lines({"[[plugin]]", "path = \"a.so\"", "[plugin.quota]",
                                         "databases_limt = 1"})),
            "/etc/payhost/payhostd.toml:8:1: plugin[0].quota.databases_limt: unknown key (known: "
            "workers_reserve, workers_limit, databases_reserve, databases_limit, "
            "remote_calls_reserve, remote_calls_limit)");
}

TEST(DaemonConfig, LoadReadsFileAndResolvesAgainstItsDirectory) {
  TempDir dir;
  auto file =
      dir.write("payhostd.toml", lines({
                                     "[listen]",
                                     "unix = [{ path = \"payhost.sock\", insecure = true }]",
                                     "[admin]",
                                     "socket = \"admin.sock\"",
                                     "[[plugin]]",
                                     "path = \"card.so\"",
                                 }));

  auto config = loadDaemonConfig(kj::StringPtr(file.c_str()), CPUS);

  EXPECT_EQ(fs::path(config.sourcePath.cStr()), file);
  EXPECT_EQ(fs::path(config.unix[0].address.cStr()), dir.path / "payhost.sock");
  EXPECT_TRUE(config.unix[0].insecure);
  EXPECT_EQ(fs::path(config.adminSocket.cStr()), dir.path / "admin.sock");
  EXPECT_EQ(fs::path(config.plugins[0].path.cStr()), dir.path / "card.so");
  EXPECT_EQ(config.shards, CPUS);
}

TEST(DaemonConfig, LoadErrorsNameTheFile) {
  TempDir dir;
  auto file = dir.write("bad.toml", lines({"[host]", "shardz = 1"}));

  KJ_IF_MAYBE (exception,
               kj::runCatchingExceptions([&]() { loadDaemonConfig(file.c_str(), CPUS); })) {
    EXPECT_EQ(str(exception->getDescription()),
              file.native() +
                  ":2:1: host.shardz: unknown key "
                  "(known: shards, log_level, log_format, drain_timeout_ms, data_dir)");
  } else {
    ADD_FAILURE() << "no error";
  }
}

TEST(DaemonConfig, ParsesTlsAccessAndLimits) {
  auto config = parse(lines({
      "[listen]",
      "tcp = [\"0.0.0.0:7400\", { address = \"127.0.0.1:7401\", insecure = true, identity = "
      "\"dev\" }]",
      "unix = [{ path = \"/run/p.sock\", insecure = true }]",
      "[admin]",
      "socket = \"admin.sock\"",
      "[tls]",
      "certificate = \"certs/server.pem\"",
      "private_key = \"certs/server.key\"",
      "client_ca = \"/etc/ca.pem\"",
      "[[access]]",
      "identity = \"merchant-a\"",
      "services = [\"payments.card\"]",
      "methods = [\"authorize\", \"capture\"]",
      "[[access]]",
      "identity = \"ops\"",
      "services = [\"*\"]",
      "[limits]",
      "max_message_bytes = 65536",
      "traversal_limit_words = 4096",
      "nesting_limit = 8",
      "max_connections = 10",
      "max_calls_per_connection = 4",
      "handshake_timeout_ms = 250",
      "idle_timeout_ms = 0",
  }));
  ASSERT_EQ(config.tcp.size(), 2u);
  EXPECT_FALSE(config.tcp[0].insecure);
  EXPECT_TRUE(config.tcp[1].insecure);
  EXPECT_EQ(str(config.tcp[1].identity), "dev");
  EXPECT_EQ(str(config.unix[0].identity), "anonymous");
  auto& tls = KJ_ASSERT_NONNULL(config.tls);
  EXPECT_EQ(str(tls.certificate), "/etc/payhost/certs/server.pem");
  EXPECT_EQ(str(tls.privateKey), "/etc/payhost/certs/server.key");
  EXPECT_EQ(str(tls.clientCa), "/etc/ca.pem");
  EXPECT_TRUE(tls.requireClientCertificate);
  EXPECT_EQ(tls.identity, ClientIdentity::COMMON_NAME);
  ASSERT_EQ(config.access.size(), 2u);
  EXPECT_EQ(str(config.access[0].identity), "merchant-a");
  ASSERT_EQ(config.access[0].methods.size(), 2u);
  EXPECT_EQ(str(config.access[0].methods[1]), "capture");
  EXPECT_EQ(config.access[1].methods.size(), 0u);
  EXPECT_EQ(config.limits.maxMessageBytes, 65536u);
  EXPECT_EQ(config.limits.traversalLimitWords, 4096u);
  EXPECT_EQ(config.limits.nestingLimit, 8u);
  EXPECT_EQ(config.limits.maxConnections, 10u);
  EXPECT_EQ(config.limits.maxCallsPerConnection, 4u);
  EXPECT_EQ(config.limits.handshakeTimeout, 250 * kj::MILLISECONDS);
  EXPECT_EQ(config.limits.idleTimeout, 0 * kj::MILLISECONDS);
}

TEST(DaemonConfig, TlsIdentitySourceIsOneOfThree) {
  auto withIdentity = [](const char* value) {
    return REQUIRED + lines({"[tls]", "certificate = \"s.pem\"", "private_key = \"s.key\"",
                             "client_ca = \"ca.pem\"", value});
  };
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse(withIdentity("identity = \"san-uri\"")).tls).identity,
            ClientIdentity::SAN_URI);
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse(withIdentity("identity = \"san-dns\"")).tls).identity,
            ClientIdentity::SAN_DNS);
  EXPECT_EQ(KJ_ASSERT_NONNULL(parse(withIdentity("identity = \"cn\"")).tls).identity,
            ClientIdentity::COMMON_NAME);
  EXPECT_EQ(parseError(withIdentity("identity = \"san\"")),
            "/etc/payhost/payhostd.toml:9:12: tls.identity: \"san\" is not one of \"cn\", "
            "\"san-uri\", \"san-dns\"");
  EXPECT_EQ(identitySourceName(ClientIdentity::SAN_DNS), "san-dns"_kj);
}

TEST(DaemonConfig, LimitDefaultsAreWellBelowCapnProtoDefaults) {
  auto config = parse(REQUIRED);
  capnp::ReaderOptions library;
  EXPECT_LT(config.limits.traversalLimitWords, library.traversalLimitInWords / 8);
  EXPECT_LT(config.limits.nestingLimit, static_cast<uint32_t>(library.nestingLimit) / 2);
  EXPECT_GT(config.limits.handshakeTimeout, 0 * kj::SECONDS);
}

TEST(DaemonConfig, RefusesInsecureListenerBeyondLoopback) {
  EXPECT_EQ(parseError(lines({"[listen]", "tcp = [{ address = \"0.0.0.0:7400\", insecure = true }]",
                              "[admin]", "socket = \"a.sock\""})),
            "/etc/payhost/payhostd.toml:2:8: listen.tcp[0]: insecure = true is allowed only on a "
            "loopback address (127.0.0.1, ::1, localhost) or a unix socket, not \"0.0.0.0:7400\"; "
            "configure [tls] instead");
}

TEST(DaemonConfig, RefusesTlsListenerWithoutTlsTable) {
  std::string text =
      lines({"[listen]", "tcp = [\"127.0.0.1:7400\"]", "[admin]", "socket = \"a.sock\""});
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 parseDaemonConfig(kj::StringPtr(text.c_str(), text.size()), PATH, CPUS);
               })) {
    EXPECT_EQ(str(e->getDescription()),
              "/etc/payhost/payhostd.toml:1:1: tls: listener 127.0.0.1:7400 serves TLS but there "
              "is no [tls] table (certificate, private_key, client_ca); a plaintext development "
              "listener needs insecure = true");
  } else {
    ADD_FAILURE() << "no error";
  }
}

TEST(DaemonConfig, RefusesIncompleteTlsAndAccess) {
  EXPECT_EQ(
      parseError(REQUIRED + lines({"[tls]", "certificate = \"s.pem\"", "private_key = \"s.key\""})),
      "/etc/payhost/payhostd.toml:5:1: tls.client_ca: missing required key (clients must "
      "present a certificate issued by this CA; set require_client_certificate = false to "
      "serve clients without one)");
  EXPECT_EQ(parseError(lines({"[[access]]", "identity = \"a\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:1:1: access[0].services: missing required key");
  EXPECT_EQ(parseError(lines({"[limits]", "nesting_limit = 1000"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:17: limits.nesting_limit: 1000 is out of range 4..64");
}

TEST(DaemonConfig, LoadMissingFileNamesPathAndReason) {
  TempDir dir;
  auto missing = (dir.path / "missing.toml").native();

  KJ_IF_MAYBE (exception,
               kj::runCatchingExceptions([&]() { loadDaemonConfig(missing.c_str(), CPUS); })) {
    EXPECT_EQ(str(exception->getDescription()),
              missing + ": cannot read config file: No such file or directory");
  } else {
    ADD_FAILURE() << "no error";
  }

  KJ_IF_MAYBE (exception,
               kj::runCatchingExceptions([&]() { loadDaemonConfig(dir.path.c_str(), CPUS); })) {
    EXPECT_EQ(str(exception->getDescription()),
              dir.path.native() + ": cannot read config file: Is a directory");
  } else {
    ADD_FAILURE() << "no error";
  }
}

TEST(DaemonConfig, SecurityTableTrustsKeysAndRefusesUnsignedByDefault) {
  auto plain = parse(REQUIRED);
  EXPECT_FALSE(plain.allowUnsigned);
  EXPECT_EQ(plain.trustedKeys.size(), 0u);
  EXPECT_EQ(str(plain.adminGroup), "");
  auto config = parse(lines({"[security]", "trusted_keys = [\"keys/release.pub\", \"/k/b.pub\"]",
                             "allow_unsigned = true"}) +
                      lines({"[listen]", "tcp = [\"127.0.0.1:0\"]", "[admin]",
                             "socket = \"admin.sock\"", "group = \"payhost-admin\""}));
  ASSERT_EQ(config.trustedKeys.size(), 2u);
  EXPECT_EQ(str(config.trustedKeys[0]), "/etc/payhost/keys/release.pub");
  EXPECT_EQ(str(config.trustedKeys[1]), "/k/b.pub");
  EXPECT_TRUE(config.allowUnsigned);
  EXPECT_EQ(str(config.adminGroup), "payhost-admin");
}

TEST(DaemonConfig, SecurityAndAdminGroupMistakesNameTheKey) {
  EXPECT_EQ(parseError(lines({"[security]", "allow_unsigned = \"yes\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:18: security.allow_unsigned: expected a boolean, got a "
            "string");
  EXPECT_EQ(parseError(lines({"[security]", "trusted_keys = \"k.pub\""}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:16: security.trusted_keys: expected an array, got a "
            "string");
  EXPECT_EQ(parseError(lines({"[security]", "trusted = []"}) + REQUIRED),
            "/etc/payhost/payhostd.toml:2:1: security.trusted: unknown key (known: trusted_keys, "
            "allow_unsigned)");
  EXPECT_EQ(parseError(lines({"[listen]", "tcp = [\"127.0.0.1:0\"]", "[admin]", "socket = \"a\"",
                              "group = \"bad group\""})),
            "/etc/payhost/payhostd.toml:5:9: admin.group: must be a group name (1 to 32 of A-Z a-z "
            "0-9 _ - .)");
}

}  // namespace
}  // namespace payhost::host
