// Security end to end, with payhostd and payhostctl as real processes: signed plugins (keygen,
// sign, refusals before any plugin code runs, downgrades), the admin socket's owner, mode and
// peer check, the audit log and `payhostctl audit verify`, and key material kept out of logs.
#include <payhost/host.capnp.h>

#include <gmock/gmock.h>

#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "daemon-process.h"

namespace payhost::test {
namespace {

using schema::Admin;
using testing::HasSubstr;
using testing::Not;

constexpr kj::Duration DEPLOY_TIMEOUT = 30 * kj::SECONDS;

kj::String readAll(kj::StringPtr path) {
  std::ifstream in(path.cStr(), std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return kj::heapString(text.c_str(), text.size());
}

bool exists(kj::StringPtr path) {
  return access(path.cStr(), F_OK) == 0;
}

class Signing : public EndToEnd {
protected:
  Signing() {
    setenv("PAYHOST_MARKER_FILE", marker.cStr(), 1);
    auto made = ctl({"keygen", key.cStr()});
    KJ_ASSERT(made.exitCode == 0, made.err);
    auto other = ctl({"keygen", stranger.cStr()});
    KJ_ASSERT(other.exitCode == 0, other.err);
  }
  ~Signing() noexcept override { unsetenv("PAYHOST_MARKER_FILE"); }

  // Waits for `promise` without a deadline of its own (the CTest timeout bounds it): payhostctl
  // runs block this thread outside the event loop, so its timer's "now" can lag by their length
  // and EndToEnd::await's deadline would pass at once.
  template <typename T>
  T settle(kj::Promise<T>&& promise) {
    return promise.wait(io.waitScope);
  }

  ProcessResult ctl(std::initializer_list<kj::StringPtr> args) {
    kj::Vector<kj::StringPtr> argv;
    argv.add(PAYHOSTCTL);
    for (auto arg : args)
      argv.add(arg);
    return record(runProcess(argv.asPtr(), DEPLOY_TIMEOUT));
  }

  // Keeps every command's output, for the test that greps all output for key bytes.
  ProcessResult record(ProcessResult result) {
    outputs.add(kj::str(result.out, result.err));
    return result;
  }

  // A copy of the fixture `file` in the test's directory, signed with `signingKey` (a keygen
  // prefix) under `name` and `version` unless `signingKey` is empty.
  kj::String package(kj::StringPtr file, kj::StringPtr copyName, kj::StringPtr signingKey,
                     kj::StringPtr name, kj::StringPtr version) {
    auto path = dir.file(copyName);
    writeFile(path, readAll(fixture(file)));
    if (signingKey.size() > 0) {
      auto signedResult = ctl({"sign", "--key", kj::str(signingKey, ".key"), path, "--name", name,
                               "--version", version});
      KJ_ASSERT(signedResult.exitCode == 0, signedResult.err, signedResult.out);
    }
    return path;
  }

  kj::String trust() { return kj::str("trusted_keys = [\"", key, ".pub\"]"); }

  kj::String pluginTable(kj::StringPtr path) {
    return kj::str("[[plugin]]\npath = \"", path, "\"\n");
  }

  TempDir dir;
  kj::String marker = dir.file("marker-ran");
  kj::String key = dir.file("release");
  kj::String stranger = dir.file("stranger");
  kj::Vector<kj::String> outputs;
};

TEST_F(Signing, KeygenWritesAnOwnerOnlyPrivateKeyAndSignWritesTheSignatureFile) {
  struct stat info;
  ASSERT_EQ(stat(kj::str(key, ".key").cStr(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  ASSERT_EQ(stat(kj::str(key, ".pub").cStr(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0644u);
  auto path = package("fixture-echo.so", "echo.so", key, "echo", "1.0.0");
  auto text = readAll(kj::str(path, ".sig"));
  EXPECT_THAT(s(text),
              testing::StartsWith("payhost-plugin-signature 1\nname echo\nversion 1.0.0\n"));
  // A key file others can read is refused for signing.
  chmod(kj::str(key, ".key").cStr(), 0640);
  auto refused =
      ctl({"sign", "--key", kj::str(key, ".key"), path, "--name", "echo", "--version", "1.0.0"});
  EXPECT_EQ(refused.exitCode, 1);
  EXPECT_THAT(s(refused.err), HasSubstr("has mode 0640"));
}

TEST_F(Signing, RefusesUnsignedTamperedAndUntrustedPluginsBeforeAnyOfTheirCodeRuns) {
  auto unsignedPath = package("fixture-writes-marker.so", "unsigned.so", "", "", "");
  auto tampered = package("fixture-writes-marker.so", "tampered.so", key, "marker", "1.0.0");
  {
    auto bytes = readAll(tampered);
    bytes[bytes.size() / 2] ^= 1;
    writeFile(tampered, bytes);
  }
  auto untrusted = package("fixture-writes-marker.so", "untrusted.so", stranger, "marker", "1.0.0");
  auto echo = package("fixture-echo.so", "echo.so", key, "echo", "1.0.0");
  kj::String dataDir = dir.file("data");
  {
    DaemonOptions options;
    options.dataDir = kj::heapString(dataDir);
    options.security = trust();
    options.plugins = kj::str(pluginTable(unsignedPath), pluginTable(tampered),
                              pluginTable(untrusted), pluginTable(echo));
    DaemonProcess daemon(kj::mv(options));
    EXPECT_THAT(s(daemon.waitForLog(kj::str("path=", unsignedPath))),
                HasSubstr("plugin refused: it is not signed"));
    EXPECT_THAT(s(daemon.waitForLog(kj::str("path=", tampered))),
                HasSubstr("its bytes are not the ones signed"));
    EXPECT_THAT(s(daemon.waitForLog(kj::str("path=", untrusted))), HasSubstr("is not trusted"));
    // The signed one serves.
    Connection<schema::Gateway> gateway(io, daemon.tcpAddress());
    auto echoService = gateway.echo();
    auto response = settle(screen(echoService, "tok", 5));
    expectEcho(response, "tok", 5);
    auto list = ctl({"-s", daemon.adminSocket(), "list"});
    EXPECT_THAT(s(list.out), HasSubstr("not signed"));
    EXPECT_FALSE(exists(marker)) << "a refused plugin's code ran";

    // A deploy of an unsigned package is refused the same way.
    auto deployed = ctl({"-s", daemon.adminSocket(), "deploy", unsignedPath});
    EXPECT_EQ(deployed.exitCode, 1);
    EXPECT_THAT(s(deployed.out), HasSubstr("it is not signed"));
    EXPECT_FALSE(exists(marker)) << "a refused plugin's code ran";
    outputs.add(daemon.logText());
  }
  // Each refusal is in the audit log, which verifies.
  auto audit = readAll(kj::str(dataDir, "/audit.log"));
  EXPECT_THAT(s(audit), HasSubstr("\"action\":\"load-refused\""));
  EXPECT_THAT(s(audit), HasSubstr("\"outcome\":\"refused\""));
  auto verified = ctl({"audit", "verify", "--log", kj::str(dataDir, "/audit.log")});
  EXPECT_EQ(verified.exitCode, 0) << s(verified.out);
  EXPECT_THAT(s(verified.out), HasSubstr("hash chain intact, reaches the recorded head"));
}

TEST_F(Signing, DowngradeIsRefusedUnlessForcedNamingBothVersions) {
  auto v1 = package("fixture-echo.so", "echo-1.so", key, "echo", "1.0.0");
  auto v2 = package("fixture-echo-v2.so", "echo-2.so", key, "echo", "2.0.0");
  auto v3 = package("fixture-echo-v3.so", "echo-3.so", key, "echo", "3.0.0");
  kj::String dataDir = dir.file("data");
  DaemonOptions options;
  options.dataDir = kj::heapString(dataDir);
  options.security = trust();
  options.plugins = pluginTable(v1);
  DaemonProcess daemon(kj::mv(options));
  auto up = ctl({"-s", daemon.adminSocket(), "deploy", v3});
  EXPECT_EQ(up.exitCode, 0) << s(up.out) << s(up.err);
  auto down = ctl({"-s", daemon.adminSocket(), "deploy", v2});
  EXPECT_EQ(down.exitCode, 1);
  EXPECT_THAT(s(down.out),
              HasSubstr("downgrade refused: echo 2.0.0 is older than the running version 3.0.0"));
  Connection<Admin> admin(io, daemon.adminAddress());
  {
    auto list = settle(admin.client.listRequest().send());
    EXPECT_EQ(s(list.getPlugins()[0].getVersion()), "3.0.0");
  }
  auto forced = ctl({"-s", daemon.adminSocket(), "deploy", v2, "--force"});
  EXPECT_EQ(forced.exitCode, 0) << s(forced.out) << s(forced.err);
  EXPECT_THAT(s(forced.out), HasSubstr("deployed: echo 3.0.0 -> 2.0.0"));
  // Who did what, with what outcome.
  auto request = admin.client.historyRequest();
  request.setLimit(0);
  auto history = settle(request.send());
  auto me = kj::str("uid=", getuid(), " pid=");
  bool sawRefusal = false, sawForced = false;
  for (auto entry : history.getEntries()) {
    if (entry.getAction() == "refuse") {
      sawRefusal = true;
      EXPECT_THAT(s(entry.getActor()), HasSubstr(me.cStr()));
      EXPECT_EQ(s(entry.getOutcome()), "refused");
      EXPECT_THAT(s(entry.getDetail()), HasSubstr("downgrade refused"));
    }
    if (entry.getAction() == "deploy" && entry.getToVersion() == "2.0.0") {
      sawForced = true;
      EXPECT_THAT(s(entry.getActor()), HasSubstr(me.cStr()));
      EXPECT_EQ(s(entry.getOutcome()), "ok");
      EXPECT_THAT(s(entry.getDetail()), HasSubstr("forced"));
      EXPECT_THAT(s(entry.getDetail()), HasSubstr(kj::str("signed by ", key, ".pub").cStr()));
    }
  }
  EXPECT_TRUE(sawRefusal);
  EXPECT_TRUE(sawForced);
  // Rollback (to 3.0.0) goes through the kept copy and its signature.
  auto back = ctl({"-s", daemon.adminSocket(), "rollback", "test.echo"});
  EXPECT_EQ(back.exitCode, 0) << s(back.out) << s(back.err);
}

TEST_F(Signing, AdminSocketIsOwnerOnlyOrGroupAndRefusesOtherPeers) {
  {
    DaemonProcess daemon({});
    struct stat info;
    ASSERT_EQ(stat(daemon.adminSocket().cStr(), &info), 0);
    EXPECT_EQ(info.st_mode & 0777, 0600u);
    EXPECT_EQ(info.st_uid, geteuid());
  }
  struct group* mine = getgrgid(getegid());
  ASSERT_NE(mine, nullptr);
  kj::String dataDir = dir.file("data");
  DaemonOptions options;
  options.dataDir = kj::heapString(dataDir);
  options.adminGroup = kj::str(mine->gr_name);
  DaemonProcess daemon(kj::mv(options));
  struct stat info;
  ASSERT_EQ(stat(daemon.adminSocket().cStr(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0660u);
  EXPECT_EQ(info.st_gid, getegid());
  if (geteuid() != 0) {
    GTEST_SKIP() << "connecting as another user needs root";
  }
  // Opened to everyone by hand (and its directory made passable): the daemon's own peer check
  // still refuses a stranger.
  ASSERT_EQ(chmod(daemon.adminSocket().cStr(), 0666), 0);
  auto socketDir = kj::heapString(
      daemon.adminSocket().slice(0, KJ_ASSERT_NONNULL(daemon.adminSocket().findLast('/'))));
  ASSERT_EQ(chmod(socketDir.cStr(), 0711), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un address = {};
    address.sun_family = AF_UNIX;
    strncpy(address.sun_path, daemon.adminSocket().cStr(), sizeof(address.sun_path) - 1);
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) _exit(4);
    char byte;
    // Closed by the daemon without a word.
    _exit(read(fd, &byte, 1) == 0 ? 0 : 5);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_EQ(exitCodeOf(status), 0);
  auto audit = readAll(kj::str(dataDir, "/audit.log"));
  EXPECT_THAT(s(audit), HasSubstr("\"action\":\"permission-denied\""));
  EXPECT_THAT(s(audit), HasSubstr("\"actor\":\"uid=65534 pid="));
}

// Edits the log at `path` with `edit` (over its lines) and returns what `audit verify` says.
ProcessResult verifyEdited(kj::StringPtr original, kj::StringPtr path,
                           kj::Function<void(kj::Vector<kj::String>&)> edit) {
  auto lines = splitLines(readAll(original));
  edit(lines);
  writeFile(path, kj::str(kj::strArray(lines, "\n"), "\n"));
  writeFile(kj::str(path, ".head"), readAll(kj::str(original, ".head")));
  return runProcess({PAYHOSTCTL, "audit", "verify", "--log", path});
}

TEST_F(Signing, AuditVerifyNamesTheFirstEditedRemovedReorderedOrCutRecord) {
  auto v1 = package("fixture-echo.so", "echo-1.so", key, "echo", "1.0.0");
  auto v2 = package("fixture-echo-v2.so", "echo-2.so", key, "echo", "2.0.0");
  kj::String dataDir = dir.file("data");
  {
    DaemonOptions options;
    options.dataDir = kj::heapString(dataDir);
    options.security = trust();
    options.plugins = pluginTable(v1);
    DaemonProcess daemon(kj::mv(options));
    EXPECT_EQ(ctl({"-s", daemon.adminSocket(), "deploy", v2}).exitCode, 0);
    EXPECT_EQ(ctl({"-s", daemon.adminSocket(), "rollback", "test.echo"}).exitCode, 0);
  }
  // load, deploy, unload, rollback, unload, unload at shutdown.
  auto log = kj::str(dataDir, "/audit.log");
  ASSERT_GE(splitLines(readAll(log)).size(), 5u);
  auto good = runProcess({PAYHOSTCTL, "audit", "verify", "--log", log});
  EXPECT_EQ(good.exitCode, 0) << s(good.out);

  auto copy = dir.file("copy.log");
  auto edited = verifyEdited(log, copy, [](kj::Vector<kj::String>& lines) {
    auto line = std::string(lines[1].cStr());
    auto at = line.find("\"toVersion\":\"2.0.0\"");
    KJ_ASSERT(at != std::string::npos);
    line.replace(at, 19, "\"toVersion\":\"7.0.0\"");
    lines[1] = kj::heapString(line.c_str());
  });
  EXPECT_EQ(edited.exitCode, 1);
  EXPECT_THAT(s(edited.out), HasSubstr(kj::str(copy, ":2: hash mismatch").cStr()));

  auto removed = verifyEdited(log, copy, [](kj::Vector<kj::String>& lines) {
    kj::Vector<kj::String> kept;
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i != 2) kept.add(kj::mv(lines[i]));
    }
    lines = kj::mv(kept);
  });
  EXPECT_EQ(removed.exitCode, 1);
  EXPECT_THAT(s(removed.out), HasSubstr(kj::str(copy, ":3: sequence 4, expected 3").cStr()));

  auto reordered = verifyEdited(log, copy, [](kj::Vector<kj::String>& lines) {
    auto second = kj::mv(lines[1]);
    lines[1] = kj::mv(lines[2]);
    lines[2] = kj::mv(second);
  });
  EXPECT_EQ(reordered.exitCode, 1);
  EXPECT_THAT(s(reordered.out), HasSubstr(kj::str(copy, ":2: sequence 3, expected 2").cStr()));

  auto cut = verifyEdited(log, copy, [](kj::Vector<kj::String>& lines) { lines.removeLast(); });
  EXPECT_EQ(cut.exitCode, 1);
  EXPECT_THAT(s(cut.out), HasSubstr("(entries were cut from the end)"));
}

TEST_F(Signing, NoKeyMaterialInAnyLogOrOutput) {
  auto vault = dir.file("vault.hex");
  auto vaultHex = kj::str("00112233445566778899aabbccddeeff0f1e2d3c4b5a69788796a5b4c3d2e1f0");
  writeFile(vault, kj::str(vaultHex, "\n"));
  chmod(vault.cStr(), 0600);
  auto signingPem = dir.file("signing.pem");
  KJ_ASSERT(system(kj::str("openssl genpkey -algorithm ed25519 -out ", signingPem, " 2>/dev/null")
                       .cStr()) == 0);
  chmod(signingPem.cStr(), 0600);
  auto resources = package("fixture-resources.so", "resources.so", key, "resources", "1.0.0");
  auto badKey = package("fixture-echo.so", "echo.so", stranger, "echo", "1.0.0");
  kj::String dataDir = dir.file("data");
  {
    DaemonOptions options;
    options.dataDir = kj::heapString(dataDir);
    options.security = trust();
    options.logLevel = "debug";
    options.extra =
        kj::str("[keys.vault]\ntype = \"aes-256-gcm\"\nfile = \"", vault,
                "\"\n[keys.signing]\ntype = \"ed25519\"\nfile = \"", signingPem, "\"\n");
    options.plugins =
        kj::str(pluginTable(resources), "keys = [\"vault\", \"signing\"]\n", pluginTable(badKey));
    DaemonProcess daemon(kj::mv(options));
    Connection<schema::Gateway> gateway(io, daemon.tcpAddress());
    auto service = gateway.service("test.resources");
    for (auto token : {"seal", "sign"}) {
      auto response = settle(screen(service, token, 1));
      EXPECT_GT(response.getVerdict().getFiredRules().size(), 0u);
    }
    ctl({"-s", daemon.adminSocket(), "list"});
    ctl({"-s", daemon.adminSocket(), "history", "-n", "0"});
    daemon.signal(SIGTERM);
    EXPECT_EQ(daemon.waitForExit(STEP_TIMEOUT), 0);
    outputs.add(daemon.logText());
  }
  outputs.add(readAll(kj::str(dataDir, "/audit.log")));
  // The secret bytes as they sit in their files: the vault's hex, and the base64 body of each
  // private PEM key (the daemon's signing key and the plugin signing keys).
  kj::Vector<kj::String> secrets;
  secrets.add(kj::heapString(vaultHex));
  secrets.add(kj::heapString(vaultHex.slice(0, 16)));
  auto signingKeyFile = kj::str(key, ".key");
  for (kj::StringPtr pemFile : {signingPem.asPtr(), signingKeyFile.asPtr()}) {
    for (auto& line : splitLines(readAll(pemFile))) {
      if (!line.startsWith("-----") && line.size() > 0) secrets.add(kj::mv(line));
    }
  }
  ASSERT_GE(secrets.size(), 4u);
  size_t scanned = 0;
  for (auto& output : outputs) {
    scanned += output.size();
    for (auto& secret : secrets) {
      EXPECT_FALSE(contains(output, secret)) << "key material in output:\n" << s(output);
    }
  }
  // Something was scanned: the daemon's log, the audit log and every command's output.
  EXPECT_GT(scanned, 1000u);
}

}  // namespace
}  // namespace payhost::test
