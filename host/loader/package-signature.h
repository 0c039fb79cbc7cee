// Signed plugin packages: the detached signature file that sits beside a plugin
// (`<plugin>.so.sig`), the keys payhostd trusts, and the signing side used by `payhostctl keygen`
// and `payhostctl sign`.
//
// The signature file is ASCII, at most MAX_SIGNATURE_FILE_BYTES, exactly these six lines in this
// order, each ending in "\n", nothing before, between or after them:
//
//   payhost-plugin-signature 1
//   name <plugin name, 1-64 of [A-Za-z0-9._-]>
//   version <plugin version, 1-64 of [A-Za-z0-9.+-]>
//   sha256 <64 lowercase hex: SHA-256 of the plugin file's bytes>
//   key <64 lowercase hex: the signer's raw Ed25519 public key>
//   signature <128 lowercase hex: Ed25519 signature>
//
// The signature is Ed25519 over the first four lines exactly as written (the manifest): so it
// covers the plugin's bytes (through their SHA-256) and its name and version together. The host
// checks the key is one it trusts, the signature, that the SHA-256 is that of the bytes it is
// about to load, and (after loading, before any instance exists) that the name and version are
// the plugin descriptor's.
//
// Everything here is immutable after construction and may be called from any thread.

#pragma once

#include <kj/array.h>
#include <kj/common.h>
#include <kj/memory.h>
#include <kj/string.h>
#include <kj/vector.h>

namespace payhost::host {

constexpr size_t MAX_SIGNATURE_FILE_BYTES = 1024;
constexpr kj::StringPtr SIGNATURE_FILE_SUFFIX = ".sig"_kj;

// The parsed signature file.
struct PackageManifest {
  kj::String name;
  kj::String version;
  // Lowercase hex.
  kj::String sha256;
  kj::String publicKeyHex;
  kj::String signatureHex;
};

// Parses a signature file strictly (see above). Throws FAILED naming `source` and the first
// problem (line number, what was expected). Never reads past `text`.
PackageManifest parsePackageSignature(kj::ArrayPtr<const kj::byte> text, kj::StringPtr source);

// The bytes the signature covers.
kj::String signedManifest(kj::StringPtr name, kj::StringPtr version, kj::StringPtr sha256Hex);

// The whole file: the manifest and the key and signature lines.
kj::String formatPackageSignature(kj::StringPtr name, kj::StringPtr version,
                                  kj::StringPtr sha256Hex, kj::StringPtr publicKeyHex,
                                  kj::StringPtr signatureHex);

// Lowercase hex SHA-256 of `bytes`.
kj::String sha256Hex(kj::ArrayPtr<const kj::byte> bytes);

// The public keys whose signatures payhostd accepts, read from PEM files (`payhostctl keygen`
// writes them as `NAME.pub`). Immutable.
class TrustedKeys {
public:
  struct Key {
    // The file it came from.
    kj::String source;
    // 32 raw bytes, as lowercase hex.
    kj::String publicKeyHex;
  };

  TrustedKeys() = default;
  // Reads each PEM Ed25519 public key. Throws naming the file when it cannot be read, is not an
  // Ed25519 public key, or can be written by group or others (whoever can write it can make
  // payhostd trust any code).
  static TrustedKeys load(kj::ArrayPtr<const kj::String> paths);
  // From raw hex keys (tests and fuzzing).
  static TrustedKeys fromHex(kj::ArrayPtr<const kj::StringPtr> keys);

  size_t size() const { return keys.size(); }
  kj::Maybe<const Key&> find(kj::StringPtr publicKeyHex) const;

private:
  kj::Vector<Key> keys;
};

// Checks `manifest` against the keys and the SHA-256 of the bytes about to be loaded. Throws FAILED
// with one message naming `path`: a key not trusted (with its hex), a bad signature, or bytes that
// are not the ones signed. Returns the trusted key that signed it.
const TrustedKeys::Key& verifyPackage(const TrustedKeys& trusted, const PackageManifest& manifest,
                                      kj::StringPtr loadedSha256Hex, kj::StringPtr path);

// Semantic-version precedence (semver.org, section 11): negative, zero or positive like strcmp.
// Null when either is not a version of the form MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD].
kj::Maybe<int> compareVersions(kj::StringPtr a, kj::StringPtr b);

// Signing side, for payhostctl.
struct KeyPairPem {
  kj::String privatePem;
  kj::String publicPem;
};
KeyPairPem generateSigningKey();
// Writes a key pair: `privatePath` created new with mode 0600 (refused if it exists),
// `publicPath` with mode 0644.
void writeSigningKey(const KeyPairPem& pair, kj::StringPtr privatePath, kj::StringPtr publicPath);
// The signature file for the plugin file's `bytes` under `name` and `version`, signed with the
// PEM Ed25519 private key in `privateKeyPath`. Refuses a key file readable by group or others.
kj::String signPackage(kj::StringPtr privateKeyPath, kj::ArrayPtr<const kj::byte> bytes,
                       kj::StringPtr name, kj::StringPtr version);
// The same with the PEM text of the key (tests).
kj::String signPackageWithPem(kj::StringPtr privatePem, kj::ArrayPtr<const kj::byte> bytes,
                              kj::StringPtr name, kj::StringPtr version);
// The raw public key of a PEM public or private key, as lowercase hex.
kj::String publicKeyHexOf(kj::StringPtr pem);

}  // namespace payhost::host
