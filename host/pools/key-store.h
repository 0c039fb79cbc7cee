// The host's keys: loaded from files named in the config (`[keys.NAME] type = ..., file = ...`)
// and lent to plugins as `payhost::KeyHandle`s; the key bytes never leave this object.
//
// Key files must be readable by the daemon's user only (mode 0600 or 0400): a file readable by
// group or others is refused, naming it and its mode. Formats:
//   ed25519      a PEM private key (`openssl genpkey -algorithm ed25519 -out key.pem`)
//   aes-256-gcm  64 hexadecimal characters (`openssl rand -hex 32 > key.hex`)
//   hmac-sha256  at least 64 hexadecimal characters
//
// Thread-safety: immutable after construction; handles may be used from any thread.

#pragma once

#include "host/config/daemon-config.h"

#include <payhost/keys.h>

#include <kj/memory.h>
#include <kj/string.h>
#include <kj/vector.h>

namespace payhost::host {

class KeyStore {
public:
  // Loads every key; throws one message naming the key, its file and what is wrong.
  explicit KeyStore(kj::ArrayPtr<const KeyEntry> keys);
  ~KeyStore() noexcept;
  KJ_DISALLOW_COPY(KeyStore);

  kj::Maybe<KeyHandle&> find(kj::StringPtr name);
  size_t size() const { return handles.size(); }

private:
  kj::Vector<kj::Own<KeyHandle>> handles;
};

}  // namespace payhost::host
