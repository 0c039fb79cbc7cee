// payhostd's security layer end to end, with real clients: TLS on the client listeners (the
// project's Cap'n Proto client over KJ's TLS, and `openssl s_client`), mutual TLS and the
// caller's identity, `[[access]]` per service and method, SIGHUP reloading the certificate, the
// key file's mode, and hostile input (crafted Cap'n Proto messages over raw sockets, a handshake
// that never completes) while a well-behaved client keeps calling.
//
// Certificates are issued in each test's temporary directory with the openssl CLI.

#include <capnp/rpc.capnp.h>
#include <capnp/serialize.h>
#include <kj/compat/tls.h>

#include <gmock/gmock.h>

#include <sys/stat.h>

#include <string>
#include <vector>

#include "daemon-process.h"

namespace payhost::test {
namespace {

using testing::HasSubstr;

// Runs openssl with `args`; fails the test on a non-zero exit.
void openssl(std::initializer_list<kj::StringPtr> args) {
  kj::Vector<kj::StringPtr> argv;
  argv.add("openssl");
  for (auto arg : args)
    argv.add(arg);
  // runProcess takes an initializer_list; go through /bin/sh with the words quoted instead.
  kj::Vector<kj::String> quoted;
  for (auto word : argv)
    quoted.add(kj::str("'", word, "'"));
  auto command = kj::strArray(quoted, " ");
  auto result = runProcess({"/bin/sh", "-c", command});
  ASSERT_EQ(result.exitCode, 0) << s(command) << "\n" << s(result.err);
}

// A CA, a server certificate (localhost) and client certificates, in `dir`.
struct Pki {
  explicit Pki(const TempDir& dir) : dir(dir) {}

  void makeCa(kj::StringPtr name) {
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", dir.file(kj::str(name, ".key")), "-out", dir.file(kj::str(name, ".pem")),
             "-subj", kj::str("/CN=", name), "-days", "3", "-addext",
             "basicConstraints=critical,CA:true"});
  }

  // Issues `file`.pem/.key with subject CN=`cn` from CA `ca`, valid `days` (-1: expired), with
  // the subjectAltName `san` (openssl's syntax, e.g. "URI:spiffe://x/y,DNS:a.example").
  void issue(kj::StringPtr ca, kj::StringPtr file, kj::StringPtr cn, kj::StringPtr days = "3",
             kj::StringPtr subjectPrefix = "", kj::StringPtr san = "DNS:localhost") {
    auto key = dir.file(kj::str(file, ".key"));
    auto csr = dir.file(kj::str(file, ".csr"));
    auto ext = dir.file(kj::str(file, ".ext"));
    writeFile(ext, kj::str("subjectAltName=", san, "\n"));
    openssl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             key, "-out", csr, "-subj", kj::str(subjectPrefix, "/CN=", escapeSlashes(cn))});
    openssl({"x509", "-req", "-in", csr, "-CA", dir.file(kj::str(ca, ".pem")), "-CAkey",
             dir.file(kj::str(ca, ".key")), "-CAcreateserial", "-days", days, "-extfile", ext,
             "-out", dir.file(kj::str(file, ".pem"))});
    chmod(key.cStr(), 0600);
  }

  const TempDir& dir;

private:
  // openssl's -subj separates name entries with "/": one inside a value is written "\/".
  static kj::String escapeSlashes(kj::StringPtr value) {
    kj::Vector<char> out;
    for (char c : value) {
      if (c == '/') out.add('\\');
      out.add(c);
    }
    out.add('\0');
    return kj::String(out.releaseAsArray());
  }
};

kj::String readText(kj::StringPtr path) {
  auto result = runProcess({"/bin/cat", path});
  return kj::mv(result.out);
}

// A client TLS context trusting `ca`, presenting `client` (a file stem) if not empty.
struct ClientTls {
  ClientTls(const TempDir& dir, kj::StringPtr ca, kj::StringPtr client) {
    trusted.add(kj::TlsCertificate(readText(dir.file(kj::str(ca, ".pem")))));
    kj::TlsContext::Options options;
    options.useSystemTrustStore = false;
    options.trustedCertificates = trusted;
    if (client.size() > 0) {
      keypair = kj::TlsKeypair{kj::TlsPrivateKey(readText(dir.file(kj::str(client, ".key")))),
                               kj::TlsCertificate(readText(dir.file(kj::str(client, ".pem"))))};
      options.defaultKeypair = KJ_ASSERT_NONNULL(keypair);
    }
    context = kj::heap<kj::TlsContext>(kj::mv(options));
  }
  kj::Vector<kj::TlsCertificate> trusted;
  kj::Maybe<kj::TlsKeypair> keypair;
  kj::Own<kj::TlsContext> context;
};

// A Gateway connection over TLS.
class TlsConnection {
public:
  TlsConnection(kj::AsyncIoContext& io, ClientTls& tls, kj::StringPtr address)
      : stream(tls.context->wrapClient(connectTo(io, address).wait(io.waitScope), "localhost")
                   .wait(io.waitScope)),
        rpc(kj::heap<capnp::TwoPartyClient>(*stream)),
        gateway(rpc->bootstrap().castAs<schema::Gateway>()) {}

  schema::FraudScreen::Client echo() {
    auto request = gateway.getServiceRequest();
    request.setName("test.echo");
    return request.send().getService().castAs<schema::FraudScreen>();
  }

private:
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> rpc;

public:
  schema::Gateway::Client gateway;
};

// The port of each `listener.open` line, in order, and whether it serves TLS.
struct Ports {
  uint16_t tls = 0;
  uint16_t plain = 0;
};
Ports portsOf(DaemonProcess& daemon) {
  daemon.waitForLog("event=host.ready");
  Ports ports;
  for (auto line : daemon.find("event=listener.open")) {
    auto address = KJ_ASSERT_NONNULL(logField(line, "address"));
    auto port = static_cast<uint16_t>(
        strtoul(address.cStr() + KJ_ASSERT_NONNULL(address.findLast(':')) + 1, nullptr, 10));
    (contains(line, "tls=on") ? ports.tls : ports.plain) = port;
  }
  return ports;
}

class Security : public EndToEnd {
protected:
  // One CA for clients and the server, another CA, and clients: merchant-a (granted test.echo),
  // merchant-b (granted test.echo but no method of it), merchant-a from the other CA, and an
  // expired merchant-a.
  static void SetUpTestSuite() {
    certs = new TempDir();
    Pki pki(*certs);
    pki.makeCa("ca");
    pki.makeCa("other-ca");
    pki.issue("ca", "server", "localhost");
    pki.issue("ca", "merchant-a", "merchant-a");
    pki.issue("ca", "merchant-b", "merchant-b");
    pki.issue("other-ca", "impostor", "merchant-a");
    pki.issue("ca", "expired", "merchant-a", "-1");
  }
  static constexpr kj::StringPtr SPIFFE_A = "spiffe://payhost.test/merchant-a"_kj;
  static void TearDownTestSuite() {
    delete certs;
    certs = nullptr;
  }

  // `tls` holds further lines of `[tls]` (e.g. identity = "san-uri").
  static DaemonOptions options(kj::StringPtr limits = "", kj::StringPtr tls = "") {
    DaemonOptions options;
    options.listen = kj::str(
        "tcp = [\"127.0.0.1:0\", { address = \"127.0.0.1:0\", insecure = true, identity = "
        "\"local\" }]");
    options.access = kj::str(
        "[[access]]\nidentity = \"merchant-a\"\nservices = [\"test.echo\"]\n"
        "[[access]]\nidentity = \"merchant-b\"\nservices = [\"test.echo\"]\nmethods = "
        "[\"refund\"]\n"
        "[[access]]\nidentity = \"",
        SPIFFE_A,
        "\"\nservices = [\"test.echo\"]\n"
        "[[access]]\nidentity = \"merchant-a.clients.test\"\nservices = [\"test.echo\"]\n"
        "[[access]]\nidentity = \"local\"\nservices = [\"*\"]\n");
    options.extra =
        kj::str("[tls]\ncertificate = \"", certs->file("server.pem"), "\"\nprivate_key = \"",
                certs->file("server.key"), "\"\nclient_ca = \"", certs->file("ca.pem"), "\"\n", tls,
                "\n[metrics]\nlisten = \"127.0.0.1:0\"\n[limits]\n", limits);
    options.plugins = echoPlugin("report_caller = true");
    return options;
  }

  // `openssl s_client` against `port` with `args`; its output (stdout and stderr) and exit code.
  ProcessResult sClient(uint16_t port, kj::StringPtr args) {
    auto command =
        kj::str("echo | openssl s_client -connect 127.0.0.1:", port,
                " -servername localhost -CAfile ", certs->file("ca.pem"), " ", args, " 2>&1");
    return runProcess({"/bin/sh", "-c", command});
  }

  kj::String tlsAddress(const Ports& ports) { return kj::str("127.0.0.1:", ports.tls); }

  // GET /metrics over a plain socket.
  kj::String metrics(DaemonProcess& daemon) {
    auto line = daemon.waitForLog("event=metrics.open");
    auto address = KJ_ASSERT_NONNULL(logField(line, "address"));
    auto stream = connectTo(io, address).wait(io.waitScope);
    kj::StringPtr request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    stream->write(request.begin(), request.size()).wait(io.waitScope);
    // Up to the last line payhostd writes (the security families come last), without waiting
    // for the server to close.
    kj::Vector<char> text;
    char buffer[4096];
    auto done = [&]() {
      std::string all(text.begin(), text.size());
      auto last = all.find("payhost_calls_refused_total{");
      return last != std::string::npos && all.find('\n', last) != std::string::npos;
    };
    while (!done()) {
      auto n = await(stream->tryRead(buffer, 1, sizeof(buffer)));
      if (n == 0) break;
      text.addAll(buffer, buffer + n);
    }
    return kj::heapString(text.begin(), text.size());
  }

  static TempDir* certs;
};

TempDir* Security::certs = nullptr;

TEST_F(Security, PermittedIdentityIsServedAndNamedToThePlugin) {
  DaemonProcess daemon(options());
  auto ports = portsOf(daemon);
  ClientTls tls(*certs, "ca", "merchant-a");
  TlsConnection connection(io, tls, tlsAddress(ports));
  auto echo = connection.echo();
  auto response = await(screen(echo, "tok_a", 1250));
  auto rules = response.getVerdict().getFiredRules();
  ASSERT_EQ(rules.size(), 3u);
  EXPECT_EQ(s(rules[0]), "tok_a");
  EXPECT_EQ(s(rules[2]), "merchant-a");

  // Per call: a concurrent caller over the plaintext listener is named as itself.
  Connection<schema::Gateway> local(io, kj::str("127.0.0.1:", ports.plain));
  auto localEcho = local.echo();
  auto first = screen(echo, "tok_a", 1);
  auto second = screen(localEcho, "tok_l", 2);
  auto third = screen(echo, "tok_a", 3);
  EXPECT_EQ(s(await(kj::mv(second)).getVerdict().getFiredRules()[2]), "local");
  EXPECT_EQ(s(await(kj::mv(first)).getVerdict().getFiredRules()[2]), "merchant-a");
  EXPECT_EQ(s(await(kj::mv(third)).getVerdict().getFiredRules()[2]), "merchant-a");
  EXPECT_TRUE(daemon.logged("event=listener.insecure")) << s(daemon.logText());
}

TEST_F(Security, PluginCallingAPluginIsNamedPluginColonName) {
  auto daemonOptions = options();
  daemonOptions.plugins = kj::str(echoPlugin("report_caller = true"), "[[plugin]]\npath = \"",
                                  fixture("fixture-forward.so"), "\"\n");
  DaemonProcess daemon(kj::mv(daemonOptions));
  auto ports = portsOf(daemon);
  Connection<schema::Gateway> local(io, kj::str("127.0.0.1:", ports.plain));
  auto echo = local.echo();
  auto forward = local.service("test.forward");
  // Interleaved: calls from the client and from the forward plugin are each named as their own.
  auto first = screen(forward, "tok_f", 1);
  auto second = screen(echo, "tok_l", 2);
  auto third = screen(forward, "tok_f", 3);
  auto forwarded = await(kj::mv(first));
  auto rules = forwarded.getVerdict().getFiredRules();
  ASSERT_EQ(rules.size(), 4u);
  EXPECT_EQ(s(rules[0]), "tok_f");
  EXPECT_EQ(s(rules[2]), "plugin:forward");
  EXPECT_EQ(s(rules[3]), "forwarded");
  EXPECT_EQ(s(await(kj::mv(second)).getVerdict().getFiredRules()[2]), "local");
  EXPECT_EQ(s(await(kj::mv(third)).getVerdict().getFiredRules()[2]), "plugin:forward");
}

TEST_F(Security, ProjectClientServesPermittedAndRefusesWithoutCertificate) {
  DaemonProcess daemon(options());
  auto ports = portsOf(daemon);
  auto address = tlsAddress(ports);
  auto ok =
      runProcess({PAYHOST_CLIENT, "--connect", address, "--ca", certs->file("ca.pem"), "--cert",
                  certs->file("merchant-a.pem"), "--key", certs->file("merchant-a.key"), "list"});
  EXPECT_EQ(ok.exitCode, 0) << s(ok.err);
  EXPECT_THAT(s(ok.out), HasSubstr("test.echo"));
  // merchant-b may use no method of any service, but may list test.echo's service.
  auto noCert =
      runProcess({PAYHOST_CLIENT, "--connect", address, "--ca", certs->file("ca.pem"), "list"});
  EXPECT_EQ(noCert.exitCode, 1);
  auto plain = runProcess({PAYHOST_CLIENT, "--connect", address, "list"});
  EXPECT_EQ(plain.exitCode, 1);
  daemon.waitForLog("event=tls.handshake_failed");
}

TEST_F(Security, ForbiddenMethodIsRefusedLoggedAndCounted) {
  DaemonProcess daemon(options());
  auto ports = portsOf(daemon);
  ClientTls tls(*certs, "ca", "merchant-b");
  TlsConnection connection(io, tls, tlsAddress(ports));
  auto echo = connection.echo();
  auto e = awaitFailure(screen(echo, "tok_b", 1));
  EXPECT_THAT(describe(e), HasSubstr("permission denied: identity 'merchant-b' may not call "
                                     "method 'screen' of service 'test.echo'"));
  // A service it has no rule for at all.
  auto request = connection.gateway.getServiceRequest();
  request.setName("payments.card");
  auto refused = awaitFailure(request.send());
  EXPECT_THAT(describe(refused), HasSubstr("identity 'merchant-b' may not call service "
                                           "'payments.card'"));
  daemon.waitForLog("event=access.denied identity=merchant-b service=test.echo method=screen");
  daemon.waitForLog("event=access.denied identity=merchant-b service=payments.card");
  EXPECT_THAT(s(metrics(daemon)), HasSubstr("payhost_access_denied_total 2"));
}

TEST_F(Security, OpensslClientsRefusedUnlessCurrentCertificateFromTheCa) {
  DaemonProcess daemon(options());
  auto ports = portsOf(daemon);
  auto cert = [&](kj::StringPtr stem) {
    return kj::str("-cert ", certs->file(kj::str(stem, ".pem")), " -key ",
                   certs->file(kj::str(stem, ".key")));
  };
  // Served: TLS 1.2 and 1.3 with merchant-a's certificate (proves the refusals below are real).
  auto tls12 = sClient(ports.tls, kj::str("-tls1_2 ", cert("merchant-a")));
  EXPECT_THAT(s(tls12.out), HasSubstr("Protocol  : TLSv1.2"));
  EXPECT_THAT(s(tls12.out), HasSubstr("Verify return code: 0 (ok)"));
  EXPECT_THAT(s(tls12.out), HasSubstr("Cipher    : ECDHE-ECDSA-"));
  auto tls13 = sClient(ports.tls, cert("merchant-a"));
  EXPECT_THAT(s(tls13.out), HasSubstr("TLSv1.3"));
  daemon.readAvailableLog();
  auto failedBefore = daemon.find("event=tls.handshake_failed").size();

  // TLS 1.0 and 1.1, with the client's own security level lowered so that only the server can
  // be the one refusing them.
  for (auto version : {"-tls1", "-tls1_1"}) {
    auto old =
        sClient(ports.tls, kj::str(version, " -cipher DEFAULT@SECLEVEL=0 ", cert("merchant-a")));
    EXPECT_NE(old.exitCode, 0) << s(old.out);
    EXPECT_THAT(s(old.out), HasSubstr("alert protocol version"));
    EXPECT_THAT(s(old.out), HasSubstr("Cipher is (NONE)"));
  }
  // A weak TLS 1.2 suite the server does not offer.
  auto weak = sClient(ports.tls, kj::str("-tls1_2 -cipher AES128-SHA ", cert("merchant-a")));
  EXPECT_NE(weak.exitCode, 0) << s(weak.out);

  // No certificate, a certificate from another CA, an expired one: the handshake fails (the
  // server's refusal reaches a TLS 1.3 client as an alert on its first read).
  kj::String refusedArgs[] = {kj::str("-tls1_2"), kj::str("-tls1_2 ", cert("impostor")),
                              kj::str("-tls1_2 ", cert("expired"))};
  for (auto& args : refusedArgs) {
    auto refused = sClient(ports.tls, args);
    EXPECT_NE(refused.exitCode, 0) << s(args) << "\n" << s(refused.out);
  }
  auto failures = daemon.waitForLogCount("event=tls.handshake_failed", failedBefore + 6);
  auto all = kj::strArray(failures, "\n");
  EXPECT_THAT(s(all), HasSubstr("unsupported protocol"));
  EXPECT_THAT(s(all), HasSubstr("peer did not return a certificate"));
  EXPECT_THAT(s(all), HasSubstr("certificate verify failed"));
  auto text = s(metrics(daemon));
  EXPECT_THAT(text, testing::ContainsRegex(
                        "payhost_tls_handshake_failures_total\\{reason=\"failed\"\\} [6-9]"));

  // The project's client with the other CA's and the expired certificate.
  for (auto stem : {"impostor", "expired"}) {
    ClientTls tls(*certs, "ca", stem);
    auto e = awaitFailure(
        tls.context->wrapClient(connectTo(io, tlsAddress(ports)).wait(io.waitScope), "localhost")
            .then([&](kj::Own<kj::AsyncIoStream> stream) {
              auto rpc = kj::heap<capnp::TwoPartyClient>(*stream);
              auto request = rpc->bootstrap().castAs<schema::Gateway>().listServicesRequest();
              return request.send()
                  .then([](auto&&) { return 0; })
                  .attach(kj::mv(rpc), kj::mv(stream));
            }));
    EXPECT_FALSE(describe(e).empty());
  }
}

// `[tls] identity = "san-uri"` / "san-dns": the suite's certificates plus clients known by their
// SANs (issued here only, so the other tests do not pay for them).
class SanIdentity : public Security {
protected:
  // Whether the server hung up right after a handshake with `tls`'s certificate: the first read
  // ends (EOF) or fails. Nothing is written, so no write is pending when the server closes.
  bool closedAfterHandshake(ClientTls& tls, kj::StringPtr address) {
    auto stream =
        await(tls.context->wrapClient(connectTo(io, address).wait(io.waitScope), "localhost"));
    char byte;
    return await(stream->tryRead(&byte, 1, 1)
                     .then([](size_t n) { return n == 0; }, [](kj::Exception&&) { return true; }));
  }

  static void SetUpTestSuite() {
    Security::SetUpTestSuite();
    Pki pki(*certs);
    // A client known by its SANs (its CN is granted nothing); one whose CN is a granted identity
    // but whose URI SAN is not; one with no URI SAN.
    pki.issue("ca", "spiffe-a", "not-granted", "3", "",
              "URI:spiffe://payhost.test/merchant-a,URI:spiffe://payhost.test/second,"
              "DNS:merchant-a.clients.test");
    pki.issue("ca", "cn-only", SPIFFE_A, "3", "", "URI:spiffe://payhost.test/intruder");
    pki.issue("ca", "no-uri", SPIFFE_A, "3", "", "DNS:localhost");
    // URI "spiffe://payhost.test/merchant-a\0.evil": a NUL inside the SAN (raw DER; the openssl
    // CLI has no other way to write one).
    pki.issue("ca", "nul-uri", "nul", "3", "",
              "DER:302886267370696666653a2f2f706179686f73742e746573742f6d65726368616e742d61002e"
              "6576696c");
  }
};

// Calls test.echo over TLS with the client certificate `stem`; the identity the plugin was told,
// or the call's failure.
kj::OneOf<kj::String, kj::Exception> callerOverTls(kj::AsyncIoContext& io, ClientTls& tls,
                                                   kj::StringPtr address) {
  auto connection = kj::heap<TlsConnection>(io, tls, address);
  auto echo = connection->echo();
  auto call =
      screen(echo, "tok_s", 7)
          .then(
              [](ScreenResponse&& response) -> kj::OneOf<kj::String, kj::Exception> {
                auto rules = response.getVerdict().getFiredRules();
                return kj::str(rules[rules.size() - 1]);
              },
              [](kj::Exception&& e) -> kj::OneOf<kj::String, kj::Exception> { return kj::mv(e); })
          .attach(kj::mv(echo), kj::mv(connection));
  return call.wait(io.waitScope);
}

TEST_F(SanIdentity, SanUriIdentityIsServedAndAMatchingCnAloneIsRefused) {
  TempDir own;
  auto daemonOptions = options("", "identity = \"san-uri\"");
  daemonOptions.dataDir = own.file("data");
  DaemonProcess daemon(kj::mv(daemonOptions));
  EXPECT_THAT(s(daemon.waitForLog("event=tls.loaded")), HasSubstr("identity=san-uri"));
  auto ports = portsOf(daemon);

  // Served as its first URI SAN; its CN is granted nothing.
  ClientTls spiffe(*certs, "ca", "spiffe-a");
  auto served = callerOverTls(io, spiffe, tlsAddress(ports));
  ASSERT_TRUE(served.is<kj::String>()) << describe(served.get<kj::Exception>());
  EXPECT_EQ(s(served.get<kj::String>()), s(SPIFFE_A));

  // Its CN is a granted identity, its URI SAN is not: refused like any other identity.
  ClientTls cnOnly(*certs, "ca", "cn-only");
  auto refused = callerOverTls(io, cnOnly, tlsAddress(ports));
  ASSERT_TRUE(refused.is<kj::Exception>()) << s(refused.get<kj::String>());
  EXPECT_THAT(describe(refused.get<kj::Exception>()),
              HasSubstr("permission denied: identity 'spiffe://payhost.test/intruder' may not "
                        "call service 'test.echo'"));
  auto denied = daemon.waitForLog("event=access.denied");
  EXPECT_THAT(s(denied), HasSubstr("identity=spiffe://payhost.test/intruder"));

  // No URI SAN at all: the handshake is refused, logged and counted, never served as its CN.
  daemon.readAvailableLog();
  auto failedBefore = daemon.find("event=tls.handshake_failed").size();
  ClientTls noUri(*certs, "ca", "no-uri");
  EXPECT_TRUE(closedAfterHandshake(noUri, tlsAddress(ports)));
  auto failures = daemon.waitForLogCount("event=tls.handshake_failed", failedBefore + 1);
  EXPECT_THAT(s(failures.back()), HasSubstr("no URI subjectAltName"));

  // A granted identity followed by a NUL and more: refused, not cut at the NUL.
  ClientTls nul(*certs, "ca", "nul-uri");
  EXPECT_TRUE(closedAfterHandshake(nul, tlsAddress(ports)));
  failures = daemon.waitForLogCount("event=tls.handshake_failed", failedBefore + 2);
  EXPECT_THAT(s(failures.back()), HasSubstr("URI subjectAltName is empty or not printable ASCII"));

  auto text = s(metrics(daemon));
  EXPECT_THAT(text, HasSubstr("payhost_access_denied_total 1"));
  EXPECT_THAT(text, testing::ContainsRegex(
                        "payhost_tls_handshake_failures_total\\{reason=\"failed\"\\} [1-9]"));
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.waitForExit(STEP_TIMEOUT), 0);
  // The refusals are in the audit log as the CN-based ones are.
  auto audit = readText(own.file("data/audit.log"));
  EXPECT_THAT(s(audit), HasSubstr("spiffe://payhost.test/intruder"));
  EXPECT_THAT(s(audit), HasSubstr("no-identity"));
}

TEST_F(SanIdentity, IdentityModesPickDnsSanOrCn) {
  {
    DaemonProcess daemon(options("", "identity = \"san-dns\""));
    auto ports = portsOf(daemon);
    ClientTls spiffe(*certs, "ca", "spiffe-a");
    auto served = callerOverTls(io, spiffe, tlsAddress(ports));
    ASSERT_TRUE(served.is<kj::String>()) << describe(served.get<kj::Exception>());
    EXPECT_EQ(s(served.get<kj::String>()), "merchant-a.clients.test");
  }
  // The default is the CN: the certificate refused above under san-uri is served as its CN.
  DaemonProcess daemon(options());
  EXPECT_THAT(s(daemon.waitForLog("event=tls.loaded")), HasSubstr("identity=cn"));
  auto ports = portsOf(daemon);
  ClientTls cnOnly(*certs, "ca", "cn-only");
  auto served = callerOverTls(io, cnOnly, tlsAddress(ports));
  ASSERT_TRUE(served.is<kj::String>()) << describe(served.get<kj::Exception>());
  EXPECT_EQ(s(served.get<kj::String>()), s(SPIFFE_A));
}

TEST_F(Security, PlaintextIsRefusedOnATlsListener) {
  DaemonProcess daemon(options());
  auto ports = portsOf(daemon);
  Connection<schema::Gateway> plain(io, tlsAddress(ports));
  auto e = awaitFailure(plain.client.listServicesRequest().send());
  EXPECT_EQ(typeOf(e), "disconnected") << describe(e);
  daemon.waitForLog("wrong version number");
}

TEST_F(Security, SighupReloadsTheCertificateWithoutDroppingConnections) {
  TempDir own;
  // The daemon reads its certificate from copies this test replaces.
  for (auto name : {"server.pem", "server.key"}) {
    auto result = runProcess({"/bin/cp", certs->file(name), own.file(name)});
    ASSERT_EQ(result.exitCode, 0);
  }
  chmod(own.file("server.key").cStr(), 0600);
  auto daemonOptions = options();
  daemonOptions.extra =
      kj::str("[tls]\ncertificate = \"", own.file("server.pem"), "\"\nprivate_key = \"",
              own.file("server.key"), "\"\nclient_ca = \"", certs->file("ca.pem"), "\"\n");
  DaemonProcess daemon(kj::mv(daemonOptions));
  auto ports = portsOf(daemon);
  ClientTls tls(*certs, "ca", "merchant-a");
  TlsConnection open(io, tls, tlsAddress(ports));
  auto echo = open.echo();
  await(screen(echo, "before", 1));
  auto cert =
      kj::str("-cert ", certs->file("merchant-a.pem"), " -key ", certs->file("merchant-a.key"));
  EXPECT_THAT(s(sClient(ports.tls, cert).out), testing::Not(HasSubstr("O = reloaded")));

  // A new server certificate (same name, new key, new subject) in place, then SIGHUP.
  Pki pki(own);
  writeFile(own.file("ca.pem"), readText(certs->file("ca.pem")));
  writeFile(own.file("ca.key"), readText(certs->file("ca.key")));
  pki.issue("ca", "server", "localhost", "3", "/O=reloaded");
  daemon.signal(SIGHUP);
  daemon.waitForLog("event=tls.reloaded");

  // The open connection keeps working; a new one sees the new certificate.
  auto after = await(screen(echo, "after", 2));
  EXPECT_EQ(s(after.getVerdict().getFiredRules()[0]), "after");
  auto fresh = sClient(ports.tls, cert);
  EXPECT_THAT(s(fresh.out), HasSubstr("O = reloaded"));
  EXPECT_THAT(s(fresh.out), HasSubstr("Verify return code: 0 (ok)"));
  TlsConnection next(io, tls, tlsAddress(ports));
  auto nextEcho = next.echo();
  await(screen(nextEcho, "new", 3));

  // A broken reload (world-readable key) keeps the current certificate.
  chmod(own.file("server.key").cStr(), 0644);
  daemon.signal(SIGHUP);
  EXPECT_THAT(s(daemon.waitForLog("event=tls.reload_failed")),
              HasSubstr("lets other users read or replace the private key"));
  TlsConnection still(io, tls, tlsAddress(ports));
  auto stillEcho = still.echo();
  await(screen(stillEcho, "still", 4));
}

// The audit lines of `text` (one JSON object a line) with `action` and containing `needle`.
std::vector<std::string> auditLines(kj::StringPtr text, kj::StringPtr action,
                                    kj::StringPtr needle) {
  std::vector<std::string> found;
  std::string all(text.begin(), text.size());
  std::string actionField = "\"action\":\"" + std::string(action.cStr()) + "\"";
  size_t start = 0;
  while (start < all.size()) {
    auto end = all.find('\n', start);
    if (end == std::string::npos) end = all.size();
    auto line = all.substr(start, end - start);
    if (line.find(actionField) != std::string::npos &&
        line.find(needle.cStr()) != std::string::npos) {
      found.push_back(line);
    }
    start = end + 1;
  }
  return found;
}

TEST_F(Security, AuthenticationPermissionAndReloadEventsAreAuditedThrottled) {
  TempDir own;
  for (auto name : {"server.pem", "server.key"}) {
    ASSERT_EQ(runProcess({"/bin/cp", certs->file(name), own.file(name)}).exitCode, 0);
  }
  chmod(own.file("server.key").cStr(), 0600);
  auto daemonOptions = options();
  daemonOptions.dataDir = own.file("data");
  daemonOptions.extra =
      kj::str("[tls]\ncertificate = \"", own.file("server.pem"), "\"\nprivate_key = \"",
              own.file("server.key"), "\"\nclient_ca = \"", certs->file("ca.pem"), "\"\n");
  DaemonProcess daemon(kj::mv(daemonOptions));
  auto ports = portsOf(daemon);

  // Five handshakes without a client certificate (one record, four counted) and one with a
  // certificate from another CA (another reason, its own record).
  for (int i = 0; i < 5; ++i) {
    EXPECT_NE(sClient(ports.tls, "-tls1_2").exitCode, 0);
  }
  auto impostor =
      kj::str("-tls1_2 -cert ", certs->file("impostor.pem"), " -key ", certs->file("impostor.key"));
  EXPECT_NE(sClient(ports.tls, impostor).exitCode, 0);
  daemon.waitForLogCount("event=tls.handshake_failed", 6);

  // Two refused calls by merchant-b (one record, one counted).
  {
    ClientTls tls(*certs, "ca", "merchant-b");
    TlsConnection connection(io, tls, tlsAddress(ports));
    auto echo = connection.echo();
    awaitFailure(screen(echo, "tok_b", 1));
    awaitFailure(screen(echo, "tok_b", 2));
  }
  daemon.waitForLogCount("event=access.denied", 2);

  // A reload that works, then one that fails (world-readable key).
  daemon.signal(SIGHUP);
  daemon.waitForLog("event=tls.reloaded");
  chmod(own.file("server.key").cStr(), 0644);
  daemon.signal(SIGHUP);
  daemon.waitForLog("event=tls.reload_failed");

  // Records so far, before the summaries written at shutdown.
  auto log = own.file("data/audit.log");
  auto before = readText(log);
  EXPECT_EQ(auditLines(before, "auth-failed", "no-certificate").size(), 1u) << s(before);
  EXPECT_EQ(auditLines(before, "auth-failed", "certificate-refused").size(), 1u) << s(before);
  EXPECT_EQ(auditLines(before, "permission-denied", "\"actor\":\"merchant-b\"").size(), 1u)
      << s(before);
  EXPECT_THAT(s(before), testing::ContainsRegex("\"actor\":\"peer=127\\.0\\.0\\.1\""));
  auto reloads = auditLines(before, "tls-reload", "");
  ASSERT_EQ(reloads.size(), 2u) << s(before);
  EXPECT_THAT(reloads[0], testing::Not(HasSubstr("\"outcome\":\"failed\"")));
  EXPECT_THAT(reloads[1], HasSubstr("\"outcome\":\"failed\""));
  EXPECT_THAT(reloads[1], HasSubstr("lets other users read or replace the private key"));

  // At shutdown, what was suppressed is summarised; the chain still verifies.
  daemon.signal(SIGTERM);
  EXPECT_EQ(daemon.waitForExit(20 * kj::SECONDS), 0);
  auto after = readText(log);
  auto noCert = auditLines(after, "auth-failed", "no-certificate");
  ASSERT_EQ(noCert.size(), 2u) << s(after);
  EXPECT_THAT(noCert[1], HasSubstr("4 more like it suppressed"));
  auto denied = auditLines(after, "permission-denied", "\"actor\":\"merchant-b\"");
  ASSERT_EQ(denied.size(), 2u) << s(after);
  EXPECT_THAT(denied[1], HasSubstr("1 more like it suppressed"));
  auto verified = runProcess({PAYHOSTCTL, "audit", "verify", "--log", log});
  EXPECT_EQ(verified.exitCode, 0) << s(verified.out) << s(verified.err);
}

TEST_F(Security, WorldReadableKeyAndInsecurePublicListenerAreRefused) {
  TempDir dir;
  runProcess({"/bin/cp", certs->file("server.key"), dir.file("server.key")});
  chmod(dir.file("server.key").cStr(), 0644);
  auto config = dir.file("payhostd.toml");
  writeFile(config, kj::str("[listen]\ntcp = [\"127.0.0.1:0\"]\n[tls]\ncertificate = \"",
                            certs->file("server.pem"), "\"\nprivate_key = \"",
                            dir.file("server.key"), "\"\nclient_ca = \"", certs->file("ca.pem"),
                            "\"\n[admin]\nsocket = \"", dir.file("a.sock"), "\"\n"));
  auto result = runProcess({PAYHOSTD, "--config", config}, START_TIMEOUT);
  EXPECT_EQ(result.exitCode, 1);
  EXPECT_THAT(s(result.err), HasSubstr(kj::str("tls.private_key ", dir.file("server.key"),
                                               ": mode 0644 lets other users read or replace the "
                                               "private key")
                                           .cStr()));

  writeFile(config, kj::str("[listen]\ntcp = [{ address = \"0.0.0.0:0\", insecure = true }]\n"
                            "[admin]\nsocket = \"",
                            dir.file("a.sock"), "\"\n"));
  auto check = runProcess({PAYHOSTD, "--check", "--config", config});
  EXPECT_EQ(check.exitCode, 2);
  EXPECT_THAT(s(check.err), HasSubstr("listen.tcp[0]: insecure = true is allowed only on a "
                                      "loopback address"));
}

// --- hostile input ------------------------------------------------------------------------------

class HostileInput : public Security {
protected:
  // Calls test.echo over its own connection until `stop`, counting failures.
  struct WellBehaved {
    WellBehaved(kj::AsyncIoContext& io, kj::StringPtr address)
        : connection(io, address), echo(connection.echo()) {}
    kj::Promise<void> loop() {
      if (stop) return kj::READY_NOW;
      return screen(echo, "steady", 7)
          .then(
              [this](ScreenResponse&&) {
                ++calls;
                return loop();
              },
              [this](kj::Exception&& e) {
                ++failed;
                ADD_FAILURE() << "a well-behaved call failed: " << describe(e);
                return loop();
              });
    }
    Connection<schema::Gateway> connection;
    schema::FraudScreen::Client echo;
    bool stop = false;
    uint64_t calls = 0;
    uint64_t failed = 0;
  };

  // Waits until the server closes `stream` (end of stream or reset), reading what it sends
  // before (an RPC Abort message naming the problem).
  void expectClosed(kj::AsyncIoStream& stream, kj::Duration timeout = STEP_TIMEOUT) {
    auto deadline = now() + timeout;
    char buffer[1024];
    for (;;) {
      ASSERT_LT(now(), deadline) << "the server did not close the connection";
      auto n =
          await(stream.tryRead(buffer, 1, sizeof(buffer)).catch_([](kj::Exception&&) -> size_t {
            return 0;
          }),
                timeout);
      if (n == 0) return;
    }
  }
};

// A Call message to question 0's answer (the Gateway's getService result), whose params are
// built by `fill`.
template <typename Fill>
kj::Array<capnp::word> callMessage(uint32_t question, uint32_t target, uint64_t interfaceId,
                                   uint16_t method, Fill&& fill) {
  capnp::MallocMessageBuilder message;
  auto call = message.initRoot<capnp::rpc::Message>().initCall();
  call.setQuestionId(question);
  auto promised = call.initTarget().initPromisedAnswer();
  promised.setQuestionId(target);
  promised.initTransform(1)[0].setGetPointerField(0);
  call.setInterfaceId(interfaceId);
  call.setMethodId(method);
  fill(call.initParams().getContent());
  return capnp::messageToFlatArray(message);
}

TEST_F(HostileInput, CraftedMessagesFailTheirCallOrConnectionOnly) {
  DaemonProcess daemon(options("handshake_timeout_ms = 500\nmax_message_bytes = 65536\n"));
  auto ports = portsOf(daemon);
  auto plainAddress = kj::str("127.0.0.1:", ports.plain);
  WellBehaved steady(io, plainAddress);
  auto steadyLoop = steady.loop().eagerlyEvaluate(nullptr);

  // An RPC session by hand: bootstrap (question 0), getService("test.echo") (question 1), then
  // calls on its result (question 2, ...). Answers are read with the library's reader.
  auto raw = connectTo(io, plainAddress).wait(io.waitScope);
  auto send = [&](kj::Array<capnp::word> words) {
    auto bytes = words.asBytes();
    raw->write(bytes.begin(), bytes.size()).wait(io.waitScope);
  };
  {
    capnp::MallocMessageBuilder message;
    message.initRoot<capnp::rpc::Message>().initBootstrap().setQuestionId(0);
    send(capnp::messageToFlatArray(message));
  }
  {
    capnp::MallocMessageBuilder message;
    auto call = message.initRoot<capnp::rpc::Message>().initCall();
    call.setQuestionId(1);
    call.initTarget().initPromisedAnswer().setQuestionId(0);
    call.setInterfaceId(capnp::typeId<schema::Gateway>());
    call.setMethodId(1);
    call.initParams().getContent().initAs<schema::Gateway::GetServiceParams>().setName("test.echo");
    send(capnp::messageToFlatArray(message));
  }
  auto screenId = capnp::typeId<schema::FraudScreen>();
  // 40 levels of structs, beyond the nesting limit (16).
  send(callMessage(2, 1, screenId, 0, [](capnp::AnyPointer::Builder params) {
    auto level = params.initAsAnyStruct(0, 1);
    for (int i = 0; i < 40; ++i)
      level = level.getPointerSection()[0].initAsAnyStruct(0, 1);
  }));
  // A list of 2^29 - 1 empty structs (the most a list can have): no bytes on the wire, 2^29 - 1
  // words of traversal.
  send(callMessage(3, 1, screenId, 0, [](capnp::AnyPointer::Builder params) {
    params.initAsAnyStruct(0, 1).getPointerSection()[0].initAsListOfAnyStruct(0, 0, (1u << 29) - 1);
  }));
  // The same with 2^29 in the tag word, one more than a list can hold (read as an empty list).
  {
    auto words = callMessage(4, 1, screenId, 0, [](capnp::AnyPointer::Builder params) {
      params.initAsAnyStruct(0, 1).getPointerSection()[0].initAsListOfAnyStruct(0, 0,
                                                                                (1u << 29) - 1);
    });
    uint64_t tag = static_cast<uint64_t>((1u << 29) - 1) << 2;
    bool patched = false;
    for (auto& word : words) {
      uint64_t value;
      memcpy(&value, &word, sizeof(value));
      if (value == tag) {
        value = static_cast<uint64_t>(1u << 29) << 2;
        memcpy(static_cast<void*>(&word), &value, sizeof(value));
        patched = true;
      }
    }
    ASSERT_TRUE(patched);
    send(kj::mv(words));
  }

  // Returns for questions 0..4: 2, 3 and 4 are exceptions, 2 and 3 naming the limit.
  capnp::ReaderOptions readerOptions;
  kj::Vector<kj::String> refusals;
  uint32_t returns = 0;
  while (returns < 5) {
    auto reader = await(capnp::readMessage(*raw, readerOptions));
    auto message = reader->getRoot<capnp::rpc::Message>();
    if (!message.isReturn()) continue;
    ++returns;
    auto ret = message.getReturn();
    if (ret.getAnswerId() >= 2) {
      ASSERT_TRUE(ret.isException()) << ret.getAnswerId();
      refusals.add(kj::heapString(ret.getException().getReason()));
    }
  }
  ASSERT_EQ(refusals.size(), 3u);
  auto all = s(kj::strArray(refusals, "\n"));
  EXPECT_THAT(all, HasSubstr("too deeply-nested"));
  EXPECT_THAT(all, HasSubstr("Exceeded message traversal limit"));

  // The connection still serves a proper call after its bad ones.
  send(callMessage(5, 1, screenId, 0, [](capnp::AnyPointer::Builder params) {
    auto request = params.initAs<schema::FraudScreen::ScreenParams>().initRequest();
    request.setCardToken("fine");
    request.initAmount().setMinorUnits(5);
  }));
  for (;;) {
    auto reader = await(capnp::readMessage(*raw, readerOptions));
    auto message = reader->getRoot<capnp::rpc::Message>();
    if (!message.isReturn()) continue;
    EXPECT_TRUE(message.getReturn().isResults());
    break;
  }

  // A segment table that overflows (2^32 segments) and one announcing a message over the cap:
  // each closes its connection.
  {
    auto overflow = connectTo(io, plainAddress).wait(io.waitScope);
    uint32_t words[4] = {0xffffffffu, 1, 0, 0};
    overflow->write(words, sizeof(words)).wait(io.waitScope);
    expectClosed(*overflow);
  }
  {
    auto tooMany = connectTo(io, plainAddress).wait(io.waitScope);
    uint32_t words[2] = {1000, 1};
    tooMany->write(words, sizeof(words)).wait(io.waitScope);
    expectClosed(*tooMany);
  }
  {
    auto large = connectTo(io, plainAddress).wait(io.waitScope);
    uint32_t words[2] = {0, 65536 / 8 + 1};
    large->write(words, sizeof(words)).wait(io.waitScope);
    expectClosed(*large);
  }
  // A TLS connection that never says a word: closed at the handshake timeout.
  {
    auto silent = connectTo(io, tlsAddress(ports)).wait(io.waitScope);
    expectClosed(*silent);
    daemon.waitForLog("event=tls.handshake_timeout timeout_ms=500");
  }

  steady.stop = true;
  await(kj::mv(steadyLoop));
  EXPECT_GT(steady.calls, 0u);
  EXPECT_EQ(steady.failed, 0u);
}

TEST_F(HostileInput, ConnectionCallAndIdleLimits) {
  auto daemonOptions = options(
      "max_connections = 3\nmax_calls_per_connection = 2\n"
      "idle_timeout_ms = 400\n");
  daemonOptions.plugins = echoPlugin("report_caller = true\nslow_token = \"slow\"\nslow_ms = 2000");
  DaemonProcess daemon(kj::mv(daemonOptions));
  auto ports = portsOf(daemon);
  auto plainAddress = kj::str("127.0.0.1:", ports.plain);

  // Calls in flight per connection: two slow calls fill it, a third fails OVERLOADED.
  Connection<schema::Gateway> busy(io, plainAddress);
  auto echo = busy.echo();
  auto first = screen(echo, "slow", 1);
  auto second = screen(echo, "slow", 2);
  auto third = awaitFailure(screen(echo, "slow", 3));

  EXPECT_EQ(typeOf(third), "overloaded") << describe(third);
  EXPECT_THAT(describe(third), HasSubstr("max_calls_per_connection"));

  // Connections: with 3 open (each with a call in flight, so none is idle), a 4th is closed at
  // accept.
  Connection<schema::Gateway> two(io, plainAddress);
  Connection<schema::Gateway> three(io, plainAddress);
  auto twoEcho = two.echo();
  auto threeEcho = three.echo();
  auto twoCall = screen(twoEcho, "slow", 1);
  await(screen(threeEcho, "x", 1));
  auto threeCall = screen(threeEcho, "slow", 1);
  Connection<schema::Gateway> fourth(io, plainAddress);
  auto refused = awaitFailure(fourth.client.listServicesRequest().send());
  EXPECT_EQ(typeOf(refused), "disconnected");
  daemon.waitForLog("event=connection.refused reason=max_connections limit=3");
  await(kj::mv(first));
  await(kj::mv(second));
  await(kj::mv(twoCall));
  await(kj::mv(threeCall));

  auto text = s(metrics(daemon));
  EXPECT_THAT(text, HasSubstr("payhost_connections_refused_total{reason=\"max_connections\"} 1"));
  EXPECT_THAT(text,
              HasSubstr("payhost_calls_refused_total{reason=\"max_calls_per_connection\"} 1"));
}

TEST_F(HostileInput, IdleConnectionIsClosed) {
  DaemonProcess daemon(options("idle_timeout_ms = 400\n"));
  auto ports = portsOf(daemon);
  Connection<schema::Gateway> idle(io, kj::str("127.0.0.1:", ports.plain));
  auto echo = idle.echo();
  await(screen(echo, "x", 1));
  // No call for 400 ms: closed, and counted.
  daemon.waitForLog("event=connection.idle_closed");
  auto late = awaitFailure(screen(echo, "late", 1));
  EXPECT_EQ(typeOf(late), "disconnected");
  auto text = s(metrics(daemon));
  EXPECT_THAT(
      text, testing::ContainsRegex("payhost_connections_refused_total\\{reason=\"idle\"\\} [1-9]"));
}

}  // namespace
}  // namespace payhost::test
