// The one place where payhostd opens a connection to another payhostd (`[remotes.NAME]`): the
// socket (connect timeout, `TCP_NODELAY`, TCP keepalive) and, unless the remote is `insecure`,
// TLS on top of it. Everything above `connectToRemote()` sees an `AsyncIoStream` and does not
// care what carries it.

#pragma once

#include "host/config/daemon-config.h"

#include <kj/async-io.h>
#include <kj/compat/tls.h>
#include <kj/timer.h>

namespace payhost::host {

// This host as a TLS client of one remote (`[remotes.NAME] tls = { ... }`): TLS 1.2+, the
// listeners' cipher suites, this host's certificate presented to the remote (whose mutual TLS
// and `[[access]]` then see this host's identity), the remote's certificate verified against
// `tls.ca` and `tls.server_name`. Immutable; thread-safe (every shard wraps its connections with
// the same one).
class RemoteTlsClient {
public:
  // Reads the files named by `remote.tls` (which must be set). Throws a FAILED exception naming
  // the remote's config key and the file: unreadable, not PEM, a key that does not match the
  // certificate, or a key file that others may read (same rule as `[tls] private_key`).
  explicit RemoteTlsClient(const RemoteEntry& remote);
  ~RemoteTlsClient() noexcept(false);
  KJ_DISALLOW_COPY(RemoteTlsClient);

  // Runs the client side of the handshake on `stream`. Rejects DISCONNECTED with
  // "TLS handshake failed (server_name NAME, ca FILE): <OpenSSL's reason>" when the remote's
  // certificate does not verify or the handshake fails otherwise.
  kj::Promise<kj::Own<kj::AsyncIoStream>> wrap(kj::Own<kj::AsyncIoStream> stream) const;

  // "subject=... not_after=..." of the certificate presented, for the log. No key material.
  kj::StringPtr summary() const { return summary_; }

private:
  kj::Own<kj::TlsContext> context;
  kj::String serverName;
  kj::String caFile;
  kj::String summary_;
};

// Connects to `remote.address` ("tcp:host:port" or "unix:/path") and, with `tls`, runs the TLS
// handshake; the connect timeout covers both. Rejects DISCONNECTED (the remote's name is added by
// the caller) when the connect or handshake fails or takes longer than `remote.connectTimeout`.
// Name resolution runs off the event loop (KJ resolves names on a helper thread).
// Shard-local: call on the shard whose event loop owns `network` and `timer`; `remote` and `tls`
// outlive the returned promise.
kj::Promise<kj::Own<kj::AsyncIoStream>> connectToRemote(
    kj::Network& network, kj::Timer& timer, const RemoteEntry& remote,
    const kj::Maybe<const RemoteTlsClient&>& tls);

// The address in the form `kj::Network::parseAddress` takes ("host:port" or "unix:/path").
kj::String networkAddress(const RemoteEntry& remote);

// Sets TCP keepalive on the socket `fd` so that a peer silent for about `keepalive` (no ACK of a
// probe or of data sent) is dropped: SO_KEEPALIVE, TCP_KEEPIDLE and TCP_KEEPINTVL (seconds,
// at least 1) and TCP_USER_TIMEOUT = `keepalive`. Zero leaves the socket alone. Harmless on a
// unix socket (the calls fail and are ignored).
void setKeepalive(int fd, kj::Duration keepalive);

}  // namespace payhost::host
