// The TLS side of payhostd's client listeners: the server certificate and key, the client CA,
// and the protocol policy (TLS 1.2 or later, forward-secret AEAD cipher suites only, client
// certificates required unless the config says otherwise), made from the files in `[tls]`.
//
// A `TlsServer` is immutable once made, so every shard may use the same one; a SIGHUP makes a new
// one for new handshakes while connections made with the old one keep it alive (refcounted).
//
// Thread-safe.

#pragma once

#include "host/config/daemon-config.h"
#include "host/util/tls-files.h"

#include <kj/async-io.h>
#include <kj/compat/tls.h>
#include <kj/refcount.h>

namespace payhost::host {

class TlsServer final : public kj::AtomicRefcounted {
public:
  // Reads the certificate, private key and client CA files named by `config`. Throws a FAILED
  // exception naming the file and the problem: missing or unreadable, not PEM, a key that does
  // not match the certificate, or a key file that other users can read (its mode must give
  // nothing to "other" and no write to its group, e.g. 0600, 0400 or 0640).
  explicit TlsServer(const TlsConfig& config);
  ~TlsServer() noexcept(false) override;
  KJ_DISALLOW_COPY(TlsServer);

  // Runs the server side of the handshake on `stream`; resolves with the encrypted stream and
  // the client's verified identity (by `[tls] identity`: its certificate's subject common name,
  // first URI subjectAltName or first DNS subjectAltName), or rejects when the handshake fails
  // (no certificate, not issued by the client CA, expired, old protocol, ...) or the certificate
  // lacks that field (the message then starts "no-identity: ").
  struct Accepted {
    kj::Own<kj::AsyncIoStream> stream;
    // Empty when client certificates are not required and the client sent none.
    kj::String identity;
  };
  kj::Promise<Accepted> accept(kj::Own<kj::AsyncIoStream> stream) const;

  // "subject=CN=payhostd not_after=2027-11-27T..." for the log: what was loaded, no key material.
  kj::StringPtr summary() const { return summary_; }

  kj::Own<const TlsServer> addRef() const { return kj::atomicAddRef(*this); }

private:
  kj::Own<kj::TlsContext> context;
  bool requireClientCertificate;
  ClientIdentity identitySource;
  kj::String summary_;
};

}  // namespace payhost::host
