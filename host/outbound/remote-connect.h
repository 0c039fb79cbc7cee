// The one place where payhostd opens a connection to another payhostd (`[remotes.NAME]`).
//
// Plaintext today. TLS (client certificates, peer verification) is added here and only here:
// everything above this function sees an `AsyncIoStream` and does not care what carries it.
//
// Shard-local: call on the shard whose event loop owns `network` and `timer`.

#pragma once

#include "host/config/daemon-config.h"

#include <kj/async-io.h>
#include <kj/timer.h>

namespace payhost::host {

// Connects to `remote.address` ("tcp:host:port" or "unix:/path"). Rejects DISCONNECTED naming the
// remote when the connect fails or takes longer than `remote.connectTimeout`. Name resolution
// runs off the event loop (KJ resolves names on a helper thread).
kj::Promise<kj::Own<kj::AsyncIoStream>> connectToRemote(kj::Network& network, kj::Timer& timer,
                                                        const RemoteEntry& remote);

// The address in the form `kj::Network::parseAddress` takes ("host:port" or "unix:/path").
kj::String networkAddress(const RemoteEntry& remote);

}  // namespace payhost::host
