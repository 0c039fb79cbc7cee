#include "host/rpc/tls-server.h"

#include "host/util/errors.h"

#include <kj/debug.h>
#include <kj/io.h>

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace payhost::host {

namespace {

// TLS 1.2 suites with forward secrecy and AEAD only (Mozilla "modern" for 1.2); TLS 1.3 suites
// are all AEAD and keep OpenSSL's defaults.
constexpr const char* CIPHERS =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

kj::String readFile(kj::StringPtr path, kj::StringPtr what) {
  int fd;
  do {
    fd = ::open(path.cStr(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    auto reason = std::generic_category().message(errno);
    PAYHOST_FAIL(FAILED, what, " ", path, ": cannot read: ", reason.c_str());
  }
  kj::FdInputStream input{kj::AutoCloseFd(fd)};
  auto bytes = input.readAllBytes(1 << 20);
  return kj::heapString(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// Subject and expiry of the first certificate in `pem`, for the log.
kj::String describeCertificate(kj::StringPtr pem) {
  BIO* bio = BIO_new_mem_buf(pem.begin(), static_cast<int>(pem.size()));
  if (bio == nullptr) return kj::str("unreadable");
  KJ_DEFER(BIO_free(bio));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  if (cert == nullptr) return kj::str("unreadable");
  KJ_DEFER(X509_free(cert));
  char subject[256] = {0};
  X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof(subject));
  BIO* out = BIO_new(BIO_s_mem());
  if (out == nullptr) return kj::str(subject);
  KJ_DEFER(BIO_free(out));
  ASN1_TIME_print(out, X509_get0_notAfter(cert));
  char* text = nullptr;
  auto length = BIO_get_mem_data(out, &text);
  return kj::str("subject=\"", subject, "\" not_after=\"", kj::heapString(text, length), "\"");
}

}  // namespace

void checkPrivateKeyFile(kj::StringPtr path, kj::StringPtr what) {
  struct stat info;
  if (stat(path.cStr(), &info) != 0) {
    auto reason = std::generic_category().message(errno);
    PAYHOST_FAIL(FAILED, what, " ", path, ": cannot read: ", reason.c_str());
  }
  if (!S_ISREG(info.st_mode)) PAYHOST_FAIL(FAILED, what, " ", path, ": not a regular file");
  if ((info.st_mode & (S_IRWXO | S_IWGRP)) != 0) {
    PAYHOST_FAIL(FAILED, what, " ", path, ": mode 0", (info.st_mode >> 6) & 7,
                 (info.st_mode >> 3) & 7, info.st_mode & 7,
                 " lets other users read or replace the private key; refusing to use it (chmod "
                 "600 it, or 640 for a group)");
  }
}

TlsServer::TlsServer(const TlsConfig& config)
    : requireClientCertificate(config.requireClientCertificate) {
  checkPrivateKeyFile(config.privateKey, "tls.private_key");
  auto certificatePem = readFile(config.certificate, "tls.certificate");
  auto keyPem = readFile(config.privateKey, "tls.private_key");
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
    auto caPem = readFile(config.clientCa, "tls.client_ca");
    parse([&]() { trusted.add(kj::TlsCertificate(caPem)); }, "tls.client_ca", config.clientCa);
  }

  kj::TlsContext::Options options;
  options.useSystemTrustStore = false;
  options.verifyClients = config.requireClientCertificate;
  options.trustedCertificates = trusted;
  options.minVersion = kj::TlsVersion::TLS_1_2;
  options.cipherList = CIPHERS;
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
      .then([required = requireClientCertificate](kj::AuthenticatedStream&& authenticated) {
        auto& peer = kj::downcast<kj::TlsPeerIdentity>(*authenticated.peerIdentity);
        kj::String identity = kj::heapString("");
        if (peer.hasCertificate()) {
          identity = peer.getCommonName();
        }
        if (required && identity.size() == 0) {
          PAYHOST_FAIL(FAILED, "the client certificate has no subject common name (CN)");
        }
        return Accepted{kj::mv(authenticated.stream), kj::mv(identity)};
      });
}

}  // namespace payhost::host
