#include "host/outbound/remote-connect.h"

#include "host/util/errors.h"
#include "host/util/tls-files.h"

#include <kj/debug.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstring>

namespace payhost::host {

RemoteTlsClient::RemoteTlsClient(const RemoteEntry& remote) {
  auto& config = KJ_ASSERT_NONNULL(remote.tls);
  auto key = [&](kj::StringPtr name) { return kj::str("remotes.", remote.name, ".tls.", name); };
  checkPrivateKeyFile(config.privateKey, key("private_key"));
  auto certificatePem = readPemFile(config.certificate, key("certificate"));
  auto keyPem = readPemFile(config.privateKey, key("private_key"));
  // The key's bytes are wiped as soon as OpenSSL has parsed them.
  KJ_DEFER(memset(keyPem.begin(), 0, keyPem.size()));
  auto caPem = readPemFile(config.ca, key("ca"));

  kj::Maybe<kj::TlsKeypair> keypair;
  kj::Vector<kj::TlsCertificate> trusted;
  auto parse = [&](auto&& step, kj::StringPtr what, kj::StringPtr path) {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions(step)) {
      PAYHOST_FAIL(FAILED, what, " ", path, ": not usable: ", e->getDescription());
    }
  };
  parse([&]() { (void)kj::TlsCertificate(certificatePem); }, key("certificate"),
        config.certificate);
  parse(
      [&]() {
        keypair = kj::TlsKeypair{kj::TlsPrivateKey(keyPem), kj::TlsCertificate(certificatePem)};
      },
      key("private_key"), config.privateKey);
  parse([&]() { trusted.add(kj::TlsCertificate(caPem)); }, key("ca"), config.ca);

  kj::TlsContext::Options options;
  options.useSystemTrustStore = false;
  options.trustedCertificates = trusted;
  options.minVersion = kj::TlsVersion::TLS_1_2;
  options.cipherList = TLS_CIPHER_LIST;
  options.defaultKeypair = KJ_ASSERT_NONNULL(keypair);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                      [&]() { context = kj::heap<kj::TlsContext>(kj::mv(options)); })) {
    PAYHOST_FAIL(FAILED, key("certificate"), " ", config.certificate, " and ", key("private_key"),
                 " ", config.privateKey, " cannot be used together: ", e->getDescription());
  }
  serverName = kj::heapString(config.serverName);
  caFile = kj::heapString(config.ca);
  summary_ = describeCertificate(certificatePem);
}

RemoteTlsClient::~RemoteTlsClient() noexcept(false) = default;

kj::Promise<kj::Own<kj::AsyncIoStream>> RemoteTlsClient::wrap(
    kj::Own<kj::AsyncIoStream> stream) const {
  // kj::TlsContext only reads its SSL_CTX here (SSL_new), which OpenSSL allows from any thread.
  auto& tls = const_cast<kj::TlsContext&>(*context);
  return tls.wrapClient(kj::mv(stream), serverName)
      .catch_([this](kj::Exception&& e) -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
        return kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                             kj::str("TLS handshake failed (server_name ", serverName, ", ca ",
                                     caFile, "): ", e.getDescription()));
      });
}

kj::String networkAddress(const RemoteEntry& remote) {
  if (remote.address.startsWith("tcp:")) return kj::heapString(remote.address.slice(4));
  return kj::heapString(remote.address);
}

void setKeepalive(int fd, kj::Duration keepalive) {
  if (keepalive == 0 * kj::SECONDS) return;
  int milliseconds = static_cast<int>(keepalive / kj::MILLISECONDS);
  // Idle for half the time, then 3 probes over the other half; TCP_USER_TIMEOUT also bounds how
  // long data sent (a call) may stay unacknowledged, which keepalive alone does not cover.
  int idle = kj::max(1, milliseconds / 2000);
  int interval = kj::max(1, milliseconds / 6000);
  int count = 3;
  int one = 1;
  auto timeout = static_cast<unsigned>(milliseconds);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout, sizeof(timeout));
}

kj::Promise<kj::Own<kj::AsyncIoStream>> connectToRemote(
    kj::Network& network, kj::Timer& timer, const RemoteEntry& remote,
    const kj::Maybe<const RemoteTlsClient&>& tls) {
  auto connecting = network.parseAddress(networkAddress(remote))
                        .then([](kj::Own<kj::NetworkAddress> address) {
                          return address->connect().attach(kj::mv(address));
                        })
                        .then([&remote](kj::Own<kj::AsyncIoStream> stream) {
                          KJ_IF_MAYBE (fd, stream->getFd()) {
                            int one = 1;
                            // Fails harmlessly on unix sockets. Calls are small and latency-bound.
                            setsockopt(*fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                            setKeepalive(*fd, remote.keepalive);
                          }
                          return kj::mv(stream);
                        });
  KJ_IF_MAYBE (client, tls) {
    connecting = connecting.then(
        [client](kj::Own<kj::AsyncIoStream> stream) { return client->wrap(kj::mv(stream)); });
  }
  auto deadline =
      timer.afterDelay(remote.connectTimeout).then([&remote]() -> kj::Own<kj::AsyncIoStream> {
        PAYHOST_FAIL(DISCONNECTED, "connect timed out after ",
                     remote.connectTimeout / kj::MILLISECONDS, " ms (connect_timeout_ms)");
      });
  return connecting.exclusiveJoin(kj::mv(deadline))
      .catch_([](kj::Exception&& e) -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
        // A refused or unreachable peer is a lost peer to the caller, whatever the syscall said.
        return kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                             kj::heapString(e.getDescription()));
      });
}

}  // namespace payhost::host
