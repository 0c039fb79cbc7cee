// Key handles: cryptography with key material that never leaves the host.
//
// The host loads keys from files named in its config (`[keys.NAME]`) and lends a plugin a handle
// by name (`Context::keys("NAME")`). A handle does one kind of operation, set by the key's type:
//   ed25519       sign / verify
//   aes-256-gcm   encrypt / decrypt with associated data (a fresh random 96-bit nonce per call;
//                 the sealed form is nonce || ciphertext || 128-bit tag)
//   hmac-sha256   hmac
// Asking a handle for another kind of operation throws FAILED naming the key and its type.
//
// Thread-safety: a handle may be used from any thread (the shard or offloaded work) at once. It
// lives as long as the host; results are plain byte arrays the caller owns.

#ifndef PAYHOST_KEYS_H_
#define PAYHOST_KEYS_H_

#include <kj/array.h>
#include <kj/common.h>
#include <kj/string.h>

namespace payhost {

enum class KeyType { ED25519, AES_256_GCM, HMAC_SHA256 };

// "ed25519", "aes-256-gcm" or "hmac-sha256".
kj::StringPtr keyTypeName(KeyType type);

class KeyHandle {
public:
  virtual ~KeyHandle() noexcept(false) = default;

  virtual kj::StringPtr name() const = 0;
  virtual KeyType type() const = 0;

  // Ed25519: a 64-byte signature of `message`.
  virtual kj::Array<kj::byte> sign(kj::ArrayPtr<const kj::byte> message) = 0;
  // Ed25519: whether `signature` is this key's signature of `message`.
  virtual bool verify(kj::ArrayPtr<const kj::byte> message,
                      kj::ArrayPtr<const kj::byte> signature) = 0;

  // AES-256-GCM: seals `plaintext`, binding `associatedData` (not encrypted, but authenticated:
  // decryption with other associated data fails).
  virtual kj::Array<kj::byte> encrypt(kj::ArrayPtr<const kj::byte> plaintext,
                                      kj::ArrayPtr<const kj::byte> associatedData) = 0;
  // AES-256-GCM: the plaintext, or null when `sealed` or `associatedData` was altered.
  virtual kj::Maybe<kj::Array<kj::byte>> tryDecrypt(
      kj::ArrayPtr<const kj::byte> sealed, kj::ArrayPtr<const kj::byte> associatedData) = 0;

  // HMAC-SHA256 of `message`: 32 bytes.
  virtual kj::Array<kj::byte> hmac(kj::ArrayPtr<const kj::byte> message) = 0;
};

}  // namespace payhost

#endif  // PAYHOST_KEYS_H_
