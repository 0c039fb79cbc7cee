// What payhostd lends plugins, end to end: the `resources` fixture plugin offloads work to the
// worker pool and uses key handles, through a real payhostd process, real keys and real sockets.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "daemon-process.h"

namespace payhost::test {
namespace {

class Resources : public EndToEnd {
protected:
  // Writes the key files (owner-only) and starts payhostd with them and the resources plugin,
  // whose worker quota is `limit` leases.
  kj::Own<DaemonProcess> start(uint32_t limit, uint32_t blockMs = 300) {
    auto vault = keys.file("vault.hex");
    writeFile(vault, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n");
    chmod(vault.cStr(), 0600);
    auto signing = keys.file("signing.pem");
    auto command = kj::str("openssl genpkey -algorithm ed25519 -out ", signing, " 2>/dev/null");
    KJ_ASSERT(system(command.cStr()) == 0);
    chmod(signing.cStr(), 0600);
    DaemonOptions options;
    options.shards = 2;
    options.extra = kj::str(
        "[workers]\nmin_threads = 1\nmax_threads = 4\nlease_wait_ms = 100\n"
        "scale_interval_ms = 100\n[keys.vault]\ntype = \"aes-256-gcm\"\nfile = \"",
        vault, "\"\n[keys.signing]\ntype = \"ed25519\"\nfile = \"", signing, "\"\n");
    options.plugins =
        kj::str("[[plugin]]\npath = \"", fixture("fixture-resources.so"),
                "\"\nkeys = [\"vault\", \"signing\"]\n[plugin.quota]\n", "workers_limit = ", limit,
                "\n[plugin.config]\nblock_ms = ", blockMs, "\n");
    return kj::heap<DaemonProcess>(kj::mv(options));
  }

  // payhostd with the resources plugin granted database "store": SQLite under `dataDir`.
  kj::Own<DaemonProcess> startWithDatabase(kj::StringPtr dataDir) {
    DaemonOptions options;
    options.shards = 2;
    options.dataDir = kj::heapString(dataDir);
    options.extra = kj::str(
        "[workers]\nmin_threads = 1\nmax_threads = 4\n"
        "[databases.store]\ndriver = \"sqlite\"\nmax_connections = 2\nlease_wait_ms = 200\n");
    options.plugins = kj::str("[[plugin]]\npath = \"", fixture("fixture-resources.so"),
                              "\"\ndatabases = [\"store\"]\n[plugin.quota]\ndatabases_limit = 2\n");
    return kj::heap<DaemonProcess>(kj::mv(options));
  }

  kj::Vector<kj::String> rules(ScreenResponse& response) {
    kj::Vector<kj::String> result;
    for (auto rule : response.getVerdict().getFiredRules())
      result.add(kj::heapString(rule));
    return result;
  }

  TempDir keys;
};

TEST_F(Resources, OffloadRunsOffTheShardAndAnswersOnIt) {
  auto daemon = start(2);
  Connection<schema::Gateway> client(io, daemon->tcpAddress());
  auto service = client.service("test.resources");
  auto response = await(screen(service, "offload", 21));
  EXPECT_EQ(response.getVerdict().getScore(), 42u);
  auto fired = rules(response);
  ASSERT_EQ(fired.size(), 2u);
  EXPECT_EQ(fired[0], "offloaded");
  EXPECT_EQ(fired[1], "off-loop");
}

TEST_F(Resources, KeyHandlesSealSignAndRefuseTampering) {
  auto daemon = start(2);
  Connection<schema::Gateway> client(io, daemon->tcpAddress());
  auto service = client.service("test.resources");
  auto sealed = await(screen(service, "seal", 1));
  auto fired = rules(sealed);
  ASSERT_EQ(fired.size(), 2u);
  EXPECT_EQ(fired[1], "tamper-refused");
  auto signedResponse = await(screen(service, "sign", 1));
  EXPECT_EQ(rules(signedResponse)[0], "signed");
}

TEST_F(Resources, AKeyNotGrantedFailsTheCallNamingIt) {
  auto daemon = start(2);
  Connection<schema::Gateway> client(io, daemon->tcpAddress());
  auto service = client.service("test.resources");
  auto failure = awaitFailure(screen(service, "other", 1));
  EXPECT_TRUE(contains(failure.getDescription(), "plugin resources was not granted key 'missing'"))
      << describe(failure);
  // Only that call: the next one is served.
  auto next = await(screen(service, "offload", 1));
  EXPECT_EQ(next.getVerdict().getScore(), 2u);
}

TEST_F(Resources, WorkBeyondTheQuotaFailsOverloadedWithinTheWaitAndNeverHangs) {
  // Limit 2, each call holds a worker 300 ms, the lease wait is 100 ms: of four concurrent
  // calls, two run and two fail OVERLOADED after about 100 ms.
  auto daemon = start(2, 300);
  Connection<schema::Gateway> client(io, daemon->tcpAddress());
  auto service = client.service("test.resources");
  kj::Vector<kj::Promise<kj::Maybe<kj::Exception>>> calls;
  auto started = now();
  for (int i = 0; i < 4; ++i) {
    calls.add(screen(service, "block", 1)
                  .then([](ScreenResponse&&) -> kj::Maybe<kj::Exception> { return nullptr; },
                        [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); }));
  }
  auto outcomes = await(kj::joinPromises(calls.releaseAsArray()));
  auto elapsed = now() - started;
  int overloaded = 0, served = 0;
  for (auto& outcome : outcomes) {
    KJ_IF_MAYBE (e, outcome) {
      EXPECT_EQ(e->getType(), kj::Exception::Type::OVERLOADED) << describe(*e);
      EXPECT_TRUE(contains(e->getDescription(), "plugin resources: worker pool quota exhausted"))
          << describe(*e);
      ++overloaded;
    } else {
      ++served;
    }
  }
  EXPECT_EQ(served, 2);
  EXPECT_EQ(overloaded, 2);
  EXPECT_LT(elapsed, 5 * kj::SECONDS);
  // The leases came back: the quota serves again.
  auto again = await(screen(service, "block", 1));
  EXPECT_EQ(rules(again)[0], "blocked");
}

TEST_F(Resources, SqlTransactionsRunOffTheShardAndSurviveARestart) {
  auto dataDir = keys.file("data");
  {
    auto daemon = startWithDatabase(dataDir);
    Connection<schema::Gateway> client(io, daemon->tcpAddress());
    auto service = client.service("test.resources");
    for (uint32_t i = 1; i <= 3; ++i) {
      auto response = await(screen(service, "sql-insert", i * 100));
      EXPECT_EQ(response.getVerdict().getScore(), i);
      auto fired = rules(response);
      ASSERT_EQ(fired.size(), 2u);
      EXPECT_EQ(fired[0], "sql-inserted");
      EXPECT_EQ(fired[1], "off-loop");
    }
    // Concurrent calls from both shards all commit.
    kj::Vector<kj::Promise<ScreenResponse>> calls;
    for (int i = 0; i < 6; ++i)
      calls.add(screen(service, "sql-insert", 1));
    await(kj::joinPromises(calls.releaseAsArray()));
    auto counted = await(screen(service, "sql-count", 0));
    EXPECT_EQ(counted.getVerdict().getScore(), 9u);
    // Stopped (SIGTERM, clean exit) at the end of this scope.
  }
  // The default file is <data_dir>/store.sqlite, and what was committed is still there.
  EXPECT_EQ(access(kj::str(dataDir, "/store.sqlite").cStr(), F_OK), 0);
  auto daemon = startWithDatabase(dataDir);
  Connection<schema::Gateway> client(io, daemon->tcpAddress());
  auto service = client.service("test.resources");
  auto counted = await(screen(service, "sql-count", 0));
  EXPECT_EQ(counted.getVerdict().getScore(), 9u);
  EXPECT_EQ(rules(counted)[0], "sql-counted");
}

TEST_F(Resources, ADatabaseNotGrantedFailsTheCallNamingIt) {
  auto daemon = startWithDatabase(keys.file("data"));
  Connection<schema::Gateway> client(io, daemon->tcpAddress());
  auto service = client.service("test.resources");
  auto failure = awaitFailure(screen(service, "sql-other", 1));
  EXPECT_TRUE(
      contains(failure.getDescription(), "plugin resources was not granted database 'missing'"))
      << describe(failure);
}

TEST_F(Resources, KeyFileReadableByOthersStopsTheDaemonNamingIt) {
  auto vault = keys.file("open.hex");
  writeFile(vault, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n");
  chmod(vault.cStr(), 0644);
  auto config = keys.file("payhostd.toml");
  writeFile(config, kj::str("[listen]\nunix = [{ path = \"", keys.file("d.sock"),
                            "\", insecure = true }]\n[admin]\nsocket = \"", keys.file("a.sock"),
                            "\"\n[keys.vault]\ntype = \"aes-256-gcm\"\nfile = \"", vault, "\"\n"));
  auto result = runProcess({PAYHOSTD, "--config", config}, 10 * kj::SECONDS);
  EXPECT_EQ(result.exitCode, 1);
  EXPECT_TRUE(contains(result.err, "is readable by group or others (mode 0644)"))
      << result.err.cStr();
}

}  // namespace
}  // namespace payhost::test
