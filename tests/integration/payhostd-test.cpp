// End-to-end tests of payhostd and payhostctl: the real binaries run as child processes with a
// config in a fresh temporary directory and the real fixture plugins; clients are Cap'n Proto
// clients in this process, over real TCP (port 0) and unix sockets; shutdown is by real signals.
// The helpers (DaemonProcess, Connection, ...) are in daemon-process.h.

#include <payhost/host.capnp.h>
#include <payhost/payments.capnp.h>

#include <kj/debug.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <map>
#include <set>
#include <string>

#include "daemon-process.h"

#if !defined(PAYHOSTCTL)
#error "PAYHOSTCTL must be defined by the build"
#endif

namespace payhost {
namespace {

using namespace payhost::test;
using schema::Admin;
using schema::FraudScreen;
using schema::Gateway;
using testing::HasSubstr;

class Payhostctl : public EndToEnd {};

class Payhostd : public EndToEnd {
protected:
  // SIGTERM and SIGINT alike: calls in flight finish, new calls and connections are refused,
  // plugins are unloaded, and the daemon exits 0.
  void drainsOnSignal(int number, kj::StringPtr name) {
    constexpr uint32_t CALLS = 50;
    // Long enough that the checks between the signal and the answers fit well inside it.
    DaemonProcess daemon({.shards = 2, .plugins = echoPlugin("delay_ms = 1000\n")});
    Connection<Gateway> overTcp(io, daemon.tcpAddress());
    Connection<Gateway> overUnix(io, daemon.unixAddress());
    auto echoTcp = overTcp.echo();
    auto echoUnix = overUnix.echo();
    kj::Vector<kj::Promise<ScreenResponse>> calls;
    for (uint32_t i = 0; i < CALLS; ++i) {
      calls.add(screen(i % 2 == 0 ? echoTcp : echoUnix, kj::str("tok-", i), 100 + i));
    }
    Connection<Admin> admin(io, daemon.adminAddress());
    waitForCallsInFlight(admin, CALLS);

    daemon.signal(number);
    auto drainingLine = daemon.waitForLog("event=host.draining");
    EXPECT_THAT(s(drainingLine), HasSubstr(kj::str("reason=", name, " ").cStr()));
    EXPECT_THAT(s(drainingLine), HasSubstr(kj::str("calls_in_flight=", CALLS).cStr()));

    // Once draining: a new call on an open connection is refused...
    auto late = awaitFailure(screen(echoTcp, "tok-late", 1));
    EXPECT_EQ(typeOf(late), "disconnected");
    EXPECT_THAT(describe(late), HasSubstr("payhostd is draining"));
    // ...and so are new connections.
    awaitFailure(connectTo(io, daemon.tcpAddress()));
    awaitFailure(connectTo(io, daemon.unixAddress()));

    // Every call that was in flight is answered.
    kj::Vector<kj::Promise<void>> answered;
    for (uint32_t i = 0; i < CALLS; ++i) {
      answered.add(calls[i].then(
          [i](ScreenResponse&& response) { expectEcho(response, kj::str("tok-", i), 100 + i); },
          [i](kj::Exception&& e) {
            ADD_FAILURE() << "call " << i << " (over " << (i % 2 == 0 ? "tcp" : "unix")
                          << ") failed: " << describe(e);
          }));
    }
    await(kj::joinPromises(answered.releaseAsArray()));

    EXPECT_EQ(daemon.waitForExit(STEP_TIMEOUT), 0);
    auto drainingAt = daemon.indexOf("event=host.draining");
    auto drainedAt = daemon.indexOf("event=host.drained");
    auto unloadedAt =
        daemon.indexOf("event=plugin.unloaded plugin=echo version=1.0.0 result=unmapped");
    auto stoppedAt = daemon.indexOf("event=host.stopped");
    KJ_IF_MAYBE (draining, drainingAt) {
      KJ_IF_MAYBE (drained, drainedAt) {
        KJ_IF_MAYBE (unloaded, unloadedAt) {
          KJ_IF_MAYBE (stopped, stoppedAt) {
            EXPECT_LT(*draining, *drained);
            EXPECT_LT(*drained, *unloaded);
            EXPECT_LT(*unloaded, *stopped);
            EXPECT_FALSE(daemon.logged("event=host.drain_deadline"));
            return;
          }
        }
      }
    }
    ADD_FAILURE() << "missing shutdown events:\n" << s(daemon.logText());
  }
};

TEST_F(Payhostd, ServesEchoOverTcpAndUnixSocket) {
  DaemonProcess daemon({.plugins = echoPlugin("label = \"blue\"\n")});
  for (auto& address : {daemon.tcpAddress(), daemon.unixAddress()}) {
    SCOPED_TRACE(s(address));
    Connection<Gateway> connection(io, address);

    auto listed = await(connection.client.listServicesRequest().send());
    auto services = listed.getServices();
    ASSERT_EQ(services.size(), 1u);
    EXPECT_EQ(s(services[0].getName()), "test.echo");
    EXPECT_EQ(s(services[0].getPlugin()), "echo");
    EXPECT_EQ(s(services[0].getVersion()), "1.0.0");
    EXPECT_EQ(services[0].getInterfaceId(), capnp::typeId<FraudScreen>());
    EXPECT_THAT(s(services[0].getInterfaceName()), HasSubstr("FraudScreen"));

    auto echo = connection.echo();
    auto response = await(screen(echo, "tok_4242", 1234));
    expectEcho(response, "tok_4242", 1234, "blue");
  }
}

TEST_F(Payhostd, SpreadsConnectionsOverShards) {
  DaemonProcess daemon({.shards = 2, .logLevel = "debug", .plugins = echoPlugin()});
  // Each shard made its own instance of the plugin.
  daemon.waitForLog("event=echo.started plugin=echo version=1.0.0 shard=0");
  daemon.waitForLog("event=echo.started plugin=echo version=1.0.0 shard=1");

  constexpr size_t CONNECTIONS = 8;
  constexpr int64_t CALLS = 4;
  kj::Vector<kj::Own<Connection<Gateway>>> connections;
  kj::Vector<kj::Promise<ScreenResponse>> calls;
  for (size_t i = 0; i < CONNECTIONS; ++i) {
    connections.add(kj::heap<Connection<Gateway>>(io, daemon.tcpAddress()));
    auto echo = connections.back()->echo();
    auto merchant = kj::str("conn-", i);
    for (int64_t j = 0; j < CALLS; ++j) {
      calls.add(screen(echo, kj::str("tok-", i, "-", j), j, merchant));
    }
  }
  auto responses = await(kj::joinPromises(calls.releaseAsArray()));
  for (size_t i = 0; i < CONNECTIONS; ++i) {
    for (int64_t j = 0; j < CALLS; ++j) {
      expectEcho(responses[i * CALLS + j], kj::str("tok-", i, "-", j), j);
    }
  }

  Connection<Admin> admin(io, daemon.adminAddress());
  auto response = status(admin);
  auto hostStatus = response.getStatus();
  EXPECT_EQ(hostStatus.getShards(), 2u);
  EXPECT_EQ(hostStatus.getConnectionsOpen(), CONNECTIONS);
  EXPECT_EQ(hostStatus.getCallsTotal(), CONNECTIONS * CALLS);
  EXPECT_EQ(hostStatus.getCallsFailed(), 0u);

  // The plugin logs each call with its shard; a call is logged before it is answered, so every
  // line is in the log by now.
  auto logged = daemon.waitForLogCount("event=echo.screen", CONNECTIONS * CALLS);
  std::map<std::string, std::set<std::string>> shardsOfConnection;
  for (auto line : logged) {
    auto merchant = KJ_ASSERT_NONNULL(logField(line, "merchant"));
    auto shard = KJ_ASSERT_NONNULL(logField(line, "shard"));
    shardsOfConnection[s(merchant)].insert(s(shard));
  }
  ASSERT_EQ(shardsOfConnection.size(), CONNECTIONS);
  std::map<std::string, size_t> connectionsOnShard;
  for (auto& [merchant, shards] : shardsOfConnection) {
    // A connection belongs to one shard for its life.
    ASSERT_EQ(shards.size(), 1u) << merchant;
    ++connectionsOnShard[*shards.begin()];
  }
  // The host spreads connections itself, so 8 long-lived connections split evenly.
  EXPECT_EQ(connectionsOnShard["0"], CONNECTIONS / 2);
  EXPECT_EQ(connectionsOnShard["1"], CONNECTIONS / 2);
}

TEST_F(Payhostd, UnknownServiceErrorNamesItAndListsServedOnes) {
  DaemonProcess daemon({.plugins = echoPlugin()});
  Connection<Gateway> connection(io, daemon.tcpAddress());

  auto request = connection.client.getServiceRequest();
  request.setName("payments.nope");
  auto e = awaitFailure(request.send());
  EXPECT_EQ(typeOf(e), "failed");
  EXPECT_THAT(describe(e), HasSubstr("unknown service 'payments.nope'"));
  EXPECT_THAT(describe(e), HasSubstr("this host serves: test.echo"));

  // The connection is still good.
  auto echo = connection.echo();
  auto response = await(screen(echo, "tok-after", 7));
  expectEcho(response, "tok-after", 7);
}

TEST_F(Payhostd, UnknownMethodIsUnimplemented) {
  DaemonProcess daemon({.plugins = echoPlugin()});
  Connection<Gateway> connection(io, daemon.tcpAddress());
  auto echo = connection.echo();

  // A method FraudScreen does not have.
  auto typeless =
      capnp::Capability::Client(echo).typelessRequest(capnp::typeId<FraudScreen>(), 7, nullptr);
  auto noMethod = awaitFailure(typeless.send());
  EXPECT_EQ(typeOf(noMethod), "unimplemented") << describe(noMethod);

  // An interface the service does not implement.
  auto authorize = echo.castAs<schema::CardProcessor>().authorizeRequest();
  authorize.initRequest().setMerchantId("merchant-1");
  auto noInterface = awaitFailure(authorize.send());
  EXPECT_EQ(typeOf(noInterface), "unimplemented") << describe(noInterface);

  auto response = await(screen(echo, "tok-after", 9));
  expectEcho(response, "tok-after", 9);
}

TEST_F(Payhostd, PluginThatThrowsFailsOnlyThatCall) {
  DaemonProcess daemon({.plugins = echoPlugin("throw_token = \"tok-boom\"\n")});
  Connection<Gateway> connection(io, daemon.tcpAddress());
  auto echo = connection.echo();

  auto before = await(screen(echo, "tok-before", 1));
  expectEcho(before, "tok-before", 1);

  auto e = awaitFailure(screen(echo, "tok-boom", 2));
  EXPECT_EQ(typeOf(e), "failed");
  EXPECT_THAT(describe(e), HasSubstr("echo plugin was asked to fail this call"));

  for (int64_t i = 0; i < 3; ++i) {
    auto after = await(screen(echo, kj::str("tok-after-", i), 10 + i));
    expectEcho(after, kj::str("tok-after-", i), 10 + i);
  }

  Connection<Admin> admin(io, daemon.adminAddress());
  auto list = await(admin.client.listRequest().send());
  ASSERT_EQ(list.getPlugins().size(), 1u);
  EXPECT_EQ(list.getPlugins()[0].getCallsTotal(), 5u);
  EXPECT_EQ(list.getPlugins()[0].getCallsFailed(), 1u);
  EXPECT_EQ(status(admin).getStatus().getCallsFailed(), 1u);
}

struct BadPlugin {
  kj::StringPtr file;
  // What the refusal must say about it.
  kj::StringPtr reason;
};

const BadPlugin BAD_PLUGINS[] = {
    {"fixture-duplicate-service.so",
     "service 'test.echo' of plugin duplicate-service 1.0.0 is already provided by plugin echo "
     "1.0.0"},
    {"fixture-wrong-abi.so", "SDK ABI mismatch: plugin built against SDK ABI 99.0"},
    {"fixture-wrong-fingerprint.so",
     "build fingerprint mismatch: plugin 'compiler=clang-18 stdlib=libc++-abi1 capnp=1.0.1'"},
    {"fixture-missing-entry.so", "no entry symbol 'payhost_plugin_v1'"},
    {"fixture-not-elf.so", "the file is not an ELF shared library"},
    {"fixture-throws-in-create.so",
     "failed in its constructor: cannot reach the issuer's simulator"},
    {"no-such-plugin.so", "cannot open plugin file: No such file or directory"},
};
constexpr uint32_t BAD_PLUGIN_COUNT = sizeof(BAD_PLUGINS) / sizeof(BAD_PLUGINS[0]);

// Echo first (so the duplicate is the one refused), then every bad plugin.
DaemonOptions withBadPlugins() {
  kj::Vector<kj::String> tables;
  tables.add(echoPlugin());
  for (auto& bad : BAD_PLUGINS) {
    tables.add(kj::str("[[plugin]]\npath = \"", fixture(bad.file), "\"\n"));
  }
  return DaemonOptions{.shards = 2, .plugins = kj::strArray(tables, "\n")};
}

TEST_F(Payhostd, RefusesBadPluginsAndServesTheGoodOne) {
  DaemonProcess daemon(withBadPlugins());
  for (auto& bad : BAD_PLUGINS) {
    SCOPED_TRACE(s(bad.file));
    auto refused = daemon.find(kj::str("event=plugin.refused path=", fixture(bad.file), " "));
    ASSERT_EQ(refused.size(), 1u) << s(daemon.logText());
    EXPECT_THAT(s(refused[0]), HasSubstr(bad.reason.cStr()));
  }
  auto ready = daemon.waitForLog("event=host.ready");
  EXPECT_THAT(s(ready),
              HasSubstr(kj::str("plugins_serving=1 plugins_failed=", BAD_PLUGIN_COUNT).cStr()));

  Connection<Gateway> connection(io, daemon.tcpAddress());
  auto listed = await(connection.client.listServicesRequest().send());
  ASSERT_EQ(listed.getServices().size(), 1u);
  EXPECT_EQ(s(listed.getServices()[0].getName()), "test.echo");
  auto echo = connection.echo();
  auto response = await(screen(echo, "tok-1", 5));
  expectEcho(response, "tok-1", 5);
}

TEST_F(Payhostctl, ListShowsEachRefusedPluginWithItsError) {
  DaemonProcess daemon(withBadPlugins());
  auto result = runProcess({PAYHOSTCTL, "-s", daemon.adminSocket(), "list"});
  ASSERT_EQ(result.exitCode, 0) << s(result.err);
  auto lines = splitLines(result.out);

  bool echoListed = false;
  for (auto& line : lines) {
    if (line.startsWith("echo ")) {
      echoListed = true;
      EXPECT_THAT(s(line), HasSubstr("1.0.0"));
      EXPECT_THAT(s(line), HasSubstr("serving"));
      EXPECT_THAT(s(line), HasSubstr("test.echo"));
    }
  }
  EXPECT_TRUE(echoListed) << s(result.out);

  for (auto& bad : BAD_PLUGINS) {
    SCOPED_TRACE(s(bad.file));
    auto pathLine = kj::str("  ", fixture(bad.file));
    size_t at = 0;
    while (at < lines.size() && lines[at] != pathLine) {
      ++at;
    }
    ASSERT_LT(at + 1, lines.size()) << s(result.out);
    EXPECT_THAT(s(lines[at - 1]), HasSubstr("failed"));
    EXPECT_TRUE(lines[at + 1].startsWith("  error: ")) << s(lines[at + 1]);
    EXPECT_THAT(s(lines[at + 1]), HasSubstr(bad.reason.cStr()));
  }
}

TEST_F(Payhostctl, StatusCountsServingAndFailedPlugins) {
  DaemonProcess daemon(withBadPlugins());
  auto result = runProcess({PAYHOSTCTL, "-s", daemon.adminSocket(), "status"});
  ASSERT_EQ(result.exitCode, 0) << s(result.err);
  EXPECT_THAT(s(result.out), HasSubstr("state serving"));
  EXPECT_THAT(s(result.out), HasSubstr("shards 2"));
  EXPECT_THAT(s(result.out),
              HasSubstr(kj::str("plugins serving 1  failed ", BAD_PLUGIN_COUNT, "\n").cStr()));
  EXPECT_THAT(s(result.out), HasSubstr(kj::str("listening on ", daemon.tcpAddress(), "\n").cStr()));
  EXPECT_THAT(s(result.out),
              HasSubstr(kj::str("listening on ", daemon.unixAddress(), "\n").cStr()));
}

TEST_F(Payhostd, SigtermDrainsCallsInFlightThenExits) {
  drainsOnSignal(SIGTERM, "SIGTERM");
}

TEST_F(Payhostd, SigintDrainsCallsInFlightThenExits) {
  drainsOnSignal(SIGINT, "SIGINT");
}

TEST_F(Payhostd, DrainDeadlineCutsCallsStillInFlight) {
  DaemonProcess daemon({.drainTimeoutMs = 200, .plugins = echoPlugin("delay_ms = 5000\n")});
  Connection<Gateway> connection(io, daemon.tcpAddress());
  auto echo = connection.echo();
  auto call = screen(echo, "tok-slow", 1);
  Connection<Admin> admin(io, daemon.adminAddress());
  waitForCallsInFlight(admin, 1);

  auto signalled = now();
  daemon.signal(SIGTERM);
  // The call fails when its connection is closed at the deadline; it does not hang.
  auto cut = awaitFailure(kj::mv(call));
  EXPECT_EQ(typeOf(cut), "disconnected") << describe(cut);
  EXPECT_EQ(daemon.waitForExit(STEP_TIMEOUT), 0);
  auto elapsedMs = (now() - signalled) / kj::MILLISECONDS;
  EXPECT_LT(elapsedMs, 2000);

  auto deadline = daemon.find("event=host.drain_deadline");
  ASSERT_EQ(deadline.size(), 1u) << s(daemon.logText());
  EXPECT_THAT(s(deadline[0]), HasSubstr("calls_cut=1"));
  EXPECT_THAT(s(deadline[0]), HasSubstr("deadline_ms=200"));
  EXPECT_FALSE(daemon.logged("event=host.drained"));
  // The plugin's cut call was destroyed before its library was closed.
  EXPECT_TRUE(daemon.logged("event=plugin.unloaded plugin=echo version=1.0.0 result=unmapped"))
      << s(daemon.logText());
  EXPECT_TRUE(daemon.logged("event=host.stopped"));
}

// A config that is valid apart from what `host` says.
kj::String configWithHost(const TempDir& dir, kj::StringPtr host) {
  return kj::str("[host]\n", host,
                 "[listen]\n"
                 "tcp = [{ address = \"127.0.0.1:0\", insecure = true }]\n"
                 "[admin]\n"
                 "socket = \"",
                 dir.file("admin.sock"), "\"\n");
}

TEST_F(Payhostd, RefusesUnknownConfigKey) {
  TempDir dir;
  auto path = dir.file("payhostd.toml");
  writeFile(path, configWithHost(dir, "shards = 1\nshardz = 2\n"));
  auto result = runProcess({PAYHOSTD, "-c", path});
  EXPECT_EQ(result.exitCode, 2);
  EXPECT_THAT(s(result.err),
              HasSubstr(kj::str("payhostd: ", path, ":3:1: host.shardz: unknown key").cStr()));
  EXPECT_NE(access(dir.file("admin.sock").cStr(), F_OK), 0) << "the daemon started anyway";
}

TEST_F(Payhostd, RefusesConfigValueOfWrongType) {
  TempDir dir;
  auto path = dir.file("payhostd.toml");
  writeFile(path, configWithHost(dir, "shards = \"two\"\n"));
  auto result = runProcess({PAYHOSTD, "-c", path});
  EXPECT_EQ(result.exitCode, 2);
  EXPECT_THAT(
      s(result.err),
      HasSubstr(kj::str("payhostd: ", path, ":2:10: host.shards: expected an integer, got a string")
                    .cStr()));
}

TEST_F(Payhostd, RefusesMissingConfigFile) {
  TempDir dir;
  auto path = dir.file("absent.toml");
  auto result = runProcess({PAYHOSTD, "-c", path});
  EXPECT_EQ(result.exitCode, 2);
  EXPECT_THAT(
      s(result.err),
      HasSubstr(kj::str("payhostd: ", path, ": cannot read config file: No such file or directory")
                    .cStr()));
}

TEST_F(Payhostd, CheckAcceptsGoodConfigWithoutStarting) {
  TempDir dir;
  auto path = dir.file("payhostd.toml");
  writeFile(path, kj::str(configWithHost(dir, "shards = 2\n"), echoPlugin()));
  auto result = runProcess({PAYHOSTD, "--check", "-c", path});
  EXPECT_EQ(result.exitCode, 0) << s(result.err);
  EXPECT_THAT(s(result.out), HasSubstr(kj::str(path, ": ok (1 plugins, 2 shards)").cStr()));
  EXPECT_NE(access(dir.file("admin.sock").cStr(), F_OK), 0) << "--check started the daemon";

  auto bad = runProcess({PAYHOSTD, "--check", "-c", dir.file("absent.toml")});
  EXPECT_EQ(bad.exitCode, 2);
}

TEST_F(Payhostctl, FailsNamingTheSocketWhenNothingListens) {
  TempDir dir;
  auto path = dir.file("admin.sock");
  // No file at all.
  auto absent = runProcess({PAYHOSTCTL, "-s", path, "status"});
  EXPECT_EQ(absent.exitCode, 1);
  EXPECT_THAT(s(absent.err), HasSubstr(kj::str("payhostctl: ", path, ": ").cStr()));
  EXPECT_THAT(s(absent.err), HasSubstr("No such file or directory"));

  // A socket file left behind, with nobody listening on it.
  int fd;
  KJ_SYSCALL(fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  kj::AutoCloseFd owned(fd);
  struct sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  KJ_ASSERT(path.size() < sizeof(address.sun_path));
  memcpy(address.sun_path, path.cStr(), path.size() + 1);
  KJ_SYSCALL(bind(fd, reinterpret_cast<struct sockaddr*>(&address), sizeof(address)));
  owned = nullptr;
  auto stale = runProcess({PAYHOSTCTL, "-s", path, "list"});
  EXPECT_EQ(stale.exitCode, 1);
  EXPECT_THAT(s(stale.err), HasSubstr(kj::str("payhostctl: ", path, ": ").cStr()));
  EXPECT_THAT(s(stale.err), HasSubstr("Connection refused"));
}

}  // namespace
}  // namespace payhost
