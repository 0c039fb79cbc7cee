#include "host/rpc/tls-server.h"

#include "host/util/errors.h"
#include "host/util/tls-files.h"

#include <kj/debug.h>
#include <kj/io.h>

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstring>

namespace payhost::host {

namespace {

// kj::TlsPeerIdentity keeps the peer's X509* private and offers only its CN (Cap'n Proto 0.9.2).
// An explicit instantiation may name a private member ([temp.spec.general]/6); this reads it
// that way without assuming the class's layout, so a renamed or retyped member fails to compile.
void* peerCertificate(kj::TlsPeerIdentity& peer);
template <void* kj::TlsPeerIdentity::*CERT>
struct PeerCertificateAccess {
  friend void* peerCertificate(kj::TlsPeerIdentity& peer) { return peer.*CERT; }
};
template struct PeerCertificateAccess<&kj::TlsPeerIdentity::cert>;

// What a SAN identity may hold: printable ASCII, no space. It is compared with `[[access]]` rules
// and written to logs, so an embedded NUL ("a.example\0.evil") or a control character is refused.
bool printable(const unsigned char* data, int length) {
  for (int i = 0; i < length; ++i) {
    if (data[i] < 0x21 || data[i] > 0x7e) return false;
  }
  return length > 0;
}

// The caller's identity from its verified certificate, by `source` ([tls] identity).
kj::String certificateIdentity(kj::TlsPeerIdentity& peer, ClientIdentity source) {
  if (source == ClientIdentity::COMMON_NAME) {
    kj::String name = kj::heapString("");
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { name = peer.getCommonName(); })) {
      name = kj::heapString("");
    }
    if (name.size() == 0) {
      PAYHOST_FAIL(FAILED, "no-identity: the client certificate has no subject common name (CN)");
    }
    return name;
  }
  auto* cert = static_cast<X509*>(peerCertificate(peer));
  bool uri = source == ClientIdentity::SAN_URI;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  KJ_DEFER(GENERAL_NAMES_free(names));
  int count = names == nullptr ? 0 : sk_GENERAL_NAME_num(names);
  for (int i = 0; i < count; ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type != (uri ? GEN_URI : GEN_DNS)) continue;
    const ASN1_IA5STRING* text = uri ? name->d.uniformResourceIdentifier : name->d.dNSName;
    auto* data = ASN1_STRING_get0_data(text);
    int length = ASN1_STRING_length(text);
    if (!printable(data, length)) {
      PAYHOST_FAIL(FAILED, "no-identity: the client certificate's first ", uri ? "URI" : "DNS",
                   " subjectAltName is empty or not printable ASCII");
    }
    return kj::heapString(reinterpret_cast<const char*>(data), static_cast<size_t>(length));
  }
  PAYHOST_FAIL(FAILED, "no-identity: the client certificate has no ", uri ? "URI" : "DNS",
               " subjectAltName ([tls] identity = \"", uri ? "san-uri" : "san-dns", "\")");
}

}  // namespace

TlsServer::TlsServer(const TlsConfig& config)
    : requireClientCertificate(config.requireClientCertificate), identitySource(config.identity) {
  checkPrivateKeyFile(config.privateKey, "tls.private_key");
  auto certificatePem = readPemFile(config.certificate, "tls.certificate");
  auto keyPem = readPemFile(config.privateKey, "tls.private_key");
  // The key's bytes are wiped as soon as OpenSSL has parsed them.
  KJ_DEFER(memset(keyPem.begin(), 0, keyPem.size()));

  kj::Maybe<kj::TlsKeypair> keypair;
  kj::Vector<kj::TlsCertificate> trusted;
  auto parse = [&](auto&& step, kj::StringPtr what, kj::StringPtr path) {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions(step)) {
      PAYHOST_FAIL(FAILED, what, " ", path, ": not usable: ", e->getDescription());
    }
  };
  parse([&]() { (void)kj::TlsCertificate(certificatePem); }, "tls.certificate", config.certificate);
  parse(
      [&]() {
        keypair = kj::TlsKeypair{kj::TlsPrivateKey(keyPem), kj::TlsCertificate(certificatePem)};
      },
      "tls.private_key", config.privateKey);
  if (config.clientCa.size() > 0) {
    auto caPem = readPemFile(config.clientCa, "tls.client_ca");
    parse([&]() { trusted.add(kj::TlsCertificate(caPem)); }, "tls.client_ca", config.clientCa);
  }

  kj::TlsContext::Options options;
  options.useSystemTrustStore = false;
  options.verifyClients = config.requireClientCertificate;
  options.trustedCertificates = trusted;
  options.minVersion = kj::TlsVersion::TLS_1_2;
  options.cipherList = TLS_CIPHER_LIST;
  options.defaultKeypair = KJ_ASSERT_NONNULL(keypair);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                      [&]() { context = kj::heap<kj::TlsContext>(kj::mv(options)); })) {
    PAYHOST_FAIL(FAILED, "tls: the certificate ", config.certificate, " and the private key ",
                 config.privateKey, " cannot be used together: ", e->getDescription());
  }
  summary_ = describeCertificate(certificatePem);
}

TlsServer::~TlsServer() noexcept(false) = default;

kj::Promise<TlsServer::Accepted> TlsServer::accept(kj::Own<kj::AsyncIoStream> stream) const {
  // kj::TlsContext only reads its SSL_CTX here (SSL_new), which OpenSSL allows from any thread.
  auto& tls = const_cast<kj::TlsContext&>(*context);
  return tls
      .wrapServer(kj::AuthenticatedStream{kj::mv(stream), kj::UnknownPeerIdentity::newInstance()})
      .then([required = requireClientCertificate,
             source = identitySource](kj::AuthenticatedStream&& authenticated) {
        auto& peer = kj::downcast<kj::TlsPeerIdentity>(*authenticated.peerIdentity);
        kj::String identity = kj::heapString("");
        if (peer.hasCertificate()) {
          identity = certificateIdentity(peer, source);
        } else if (required) {
          PAYHOST_FAIL(FAILED, "the client presented no certificate");
        }
        return Accepted{kj::mv(authenticated.stream), kj::mv(identity)};
      });
}

}  // namespace payhost::host
