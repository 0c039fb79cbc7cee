#include "host/loader/package-signature.h"

#include "host/util/errors.h"

#include <kj/debug.h>
#include <kj/encoding.h>
#include <kj/io.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

namespace payhost::host {

namespace {

constexpr size_t MAX_FIELD_BYTES = 64;
constexpr size_t KEY_BYTES = 32;
constexpr size_t SIGNATURE_BYTES = 64;
constexpr kj::StringPtr HEADER = "payhost-plugin-signature 1"_kj;
// Far more than a PEM key needs; bounds what a wrong path can make us read.
constexpr size_t MAX_PEM_BYTES = 16384;

bool isNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}
bool isVersionChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '+' || c == '-';
}
bool isLowerHex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

// Reads the file at `path` (at most `limit` bytes) after checking its mode against `forbidden`.
kj::String readSmallFile(kj::StringPtr path, size_t limit, mode_t forbidden, kj::StringPtr what,
                         kj::StringPtr fix) {
  int fd = open(path.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) PAYHOST_FAIL(FAILED, path, ": cannot open ", what, ": ", strerror(errno));
  kj::AutoCloseFd owned(fd);
  struct stat info;
  KJ_SYSCALL(fstat(fd, &info), path);
  if (!S_ISREG(info.st_mode)) PAYHOST_FAIL(FAILED, path, ": ", what, " is not a regular file");
  if ((info.st_mode & forbidden) != 0) {
    char mode[8];
    snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(info.st_mode & 0777));
    PAYHOST_FAIL(FAILED, path, ": ", what, " has mode ", mode, "; ", fix);
  }
  if (static_cast<size_t>(info.st_size) > limit) {
    PAYHOST_FAIL(FAILED, path, ": ", what, " is ", info.st_size, " bytes; the limit is ", limit);
  }
  auto text = kj::heapString(info.st_size);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = read(fd, text.begin() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) PAYHOST_FAIL(FAILED, path, ": cannot read ", what);
    done += n;
  }
  return text;
}

kj::String rawPublicHex(EVP_PKEY* key) {
  unsigned char raw[KEY_BYTES];
  size_t size = sizeof(raw);
  KJ_ASSERT(EVP_PKEY_get_raw_public_key(key, raw, &size) == 1 && size == KEY_BYTES,
            "OpenSSL could not export an Ed25519 public key");
  return kj::encodeHex(kj::arrayPtr(raw, size));
}

EVP_PKEY* readPem(kj::StringPtr pem, bool isPrivate) {
  BIO* bio = BIO_new_mem_buf(pem.begin(), static_cast<int>(pem.size()));
  KJ_ASSERT(bio != nullptr);
  KJ_DEFER(BIO_free(bio));
  EVP_PKEY* key = isPrivate ? PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr)
                            : PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  if (key != nullptr && EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
    EVP_PKEY_free(key);
    return nullptr;
  }
  return key;
}

// Splits off one "field value\n" line at `at` and returns the value (not NUL-terminated); fails
// naming the line.
kj::ArrayPtr<const char> takeLine(kj::ArrayPtr<const char> text, size_t& at, unsigned lineNumber,
                                  kj::StringPtr field, kj::StringPtr source) {
  size_t start = at;
  while (at < text.size() && text[at] != '\n')
    ++at;
  if (at == text.size()) {
    PAYHOST_FAIL(FAILED, source, ":", lineNumber, ": signature file ends before the '", field,
                 "' line is complete (every line ends in a newline)");
  }
  auto line = kj::ArrayPtr<const char>(text.begin() + start, at - start);
  ++at;
  size_t fieldSize = field.size();
  if (line.size() <= fieldSize + 1 || memcmp(line.begin(), field.begin(), fieldSize) != 0 ||
      line[fieldSize] != ' ') {
    PAYHOST_FAIL(FAILED, source, ":", lineNumber, ": expected '", field,
                 " <value>' (the lines are payhost-plugin-signature, name, version, sha256, key, "
                 "signature, in that order)");
  }
  return kj::ArrayPtr<const char>(line.begin() + fieldSize + 1, line.end());
}

kj::String checkedField(kj::ArrayPtr<const char> value, unsigned lineNumber, kj::StringPtr field,
                        kj::StringPtr source, bool (*allowed)(char), size_t minSize, size_t maxSize,
                        kj::StringPtr rule) {
  bool ok = value.size() >= minSize && value.size() <= maxSize;
  for (char c : value)
    ok = ok && allowed(c);
  if (!ok) PAYHOST_FAIL(FAILED, source, ":", lineNumber, ": ", field, " must be ", rule);
  return kj::heapString(value);
}

}  // namespace

kj::String sha256Hex(kj::ArrayPtr<const kj::byte> bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  KJ_ASSERT(EVP_Digest(bytes.begin(), bytes.size(), digest, &size, EVP_sha256(), nullptr) == 1);
  return kj::encodeHex(kj::arrayPtr(digest, size));
}

PackageManifest parsePackageSignature(kj::ArrayPtr<const kj::byte> bytes, kj::StringPtr source) {
  if (bytes.size() > MAX_SIGNATURE_FILE_BYTES) {
    PAYHOST_FAIL(FAILED, source, ": signature file is ", bytes.size(), " bytes; the limit is ",
                 MAX_SIGNATURE_FILE_BYTES);
  }
  auto text = bytes.asChars();
  size_t at = 0;
  // The header line: exact, so a future format is refused rather than misread.
  if (text.size() < HEADER.size() + 1 || memcmp(text.begin(), HEADER.begin(), HEADER.size()) != 0 ||
      text[HEADER.size()] != '\n') {
    PAYHOST_FAIL(FAILED, source, ":1: not a payhost plugin signature (the first line must be '",
                 HEADER, "')");
  }
  at = HEADER.size() + 1;
  PackageManifest manifest;
  manifest.name = checkedField(takeLine(text, at, 2, "name", source), 2, "name", source, isNameChar,
                               1, MAX_FIELD_BYTES, "1 to 64 of A-Z a-z 0-9 . _ -");
  manifest.version =
      checkedField(takeLine(text, at, 3, "version", source), 3, "version", source, isVersionChar, 1,
                   MAX_FIELD_BYTES, "1 to 64 of A-Z a-z 0-9 . + -");
  manifest.sha256 = checkedField(takeLine(text, at, 4, "sha256", source), 4, "sha256", source,
                                 isLowerHex, 64, 64, "64 lowercase hexadecimal digits");
  manifest.publicKeyHex =
      checkedField(takeLine(text, at, 5, "key", source), 5, "key", source, isLowerHex,
                   KEY_BYTES * 2, KEY_BYTES * 2, "64 lowercase hexadecimal digits");
  manifest.signatureHex =
      checkedField(takeLine(text, at, 6, "signature", source), 6, "signature", source, isLowerHex,
                   SIGNATURE_BYTES * 2, SIGNATURE_BYTES * 2, "128 lowercase hexadecimal digits");
  if (at != text.size()) {
    PAYHOST_FAIL(FAILED, source, ":7: unexpected data after the signature line");
  }
  return manifest;
}

kj::String signedManifest(kj::StringPtr name, kj::StringPtr version, kj::StringPtr sha256) {
  return kj::str(HEADER, "\nname ", name, "\nversion ", version, "\nsha256 ", sha256, "\n");
}

kj::String formatPackageSignature(kj::StringPtr name, kj::StringPtr version, kj::StringPtr sha256,
                                  kj::StringPtr publicKeyHex, kj::StringPtr signatureHex) {
  return kj::str(signedManifest(name, version, sha256), "key ", publicKeyHex, "\nsignature ",
                 signatureHex, "\n");
}

TrustedKeys TrustedKeys::load(kj::ArrayPtr<const kj::String> paths) {
  TrustedKeys result;
  for (auto& path : paths) {
    auto pem = readSmallFile(path, MAX_PEM_BYTES, S_IWGRP | S_IWOTH, "trusted key file",
                             "whoever can write it can make payhostd trust any plugin: make it "
                             "0644 or 0444 and owned by root or the daemon's user");
    EVP_PKEY* raw = readPem(pem, false);
    if (raw == nullptr) {
      PAYHOST_FAIL(FAILED, path,
                   ": not a PEM Ed25519 public key (payhostctl keygen writes one as NAME.pub)");
    }
    KJ_DEFER(EVP_PKEY_free(raw));
    result.keys.add(Key{kj::heapString(path), rawPublicHex(raw)});
  }
  return result;
}

TrustedKeys TrustedKeys::fromHex(kj::ArrayPtr<const kj::StringPtr> hexKeys) {
  TrustedKeys result;
  for (auto& hex : hexKeys) {
    result.keys.add(Key{kj::str("(test key)"), kj::heapString(hex)});
  }
  return result;
}

kj::Maybe<const TrustedKeys::Key&> TrustedKeys::find(kj::StringPtr publicKeyHex) const {
  for (auto& key : keys) {
    if (key.publicKeyHex == publicKeyHex) return key;
  }
  return nullptr;
}

const TrustedKeys::Key& verifyPackage(const TrustedKeys& trusted, const PackageManifest& manifest,
                                      kj::StringPtr loadedSha256Hex, kj::StringPtr path) {
  const TrustedKeys::Key* signer = nullptr;
  KJ_IF_MAYBE (key, trusted.find(manifest.publicKeyHex)) {
    signer = key;
  } else {
    PAYHOST_FAIL(FAILED, path, ": plugin refused: signed by key ", manifest.publicKeyHex,
                 ", which is not trusted (", trusted.size(),
                 " trusted keys in [security] trusted_keys)");
  }
  auto publicKey = kj::decodeHex(manifest.publicKeyHex);
  auto signature = kj::decodeHex(manifest.signatureHex);
  KJ_ASSERT(!publicKey.hadErrors && !signature.hadErrors && publicKey.size() == KEY_BYTES &&
            signature.size() == SIGNATURE_BYTES);
  EVP_PKEY* key =
      EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, publicKey.begin(), publicKey.size());
  if (key == nullptr) {
    PAYHOST_FAIL(FAILED, path, ": plugin refused: the signature's key is not an Ed25519 key");
  }
  KJ_DEFER(EVP_PKEY_free(key));
  EVP_MD_CTX* context = EVP_MD_CTX_new();
  KJ_ASSERT(context != nullptr);
  KJ_DEFER(EVP_MD_CTX_free(context));
  auto message = signedManifest(manifest.name, manifest.version, manifest.sha256);
  bool valid = EVP_DigestVerifyInit(context, nullptr, nullptr, nullptr, key) == 1 &&
               EVP_DigestVerify(context, signature.begin(), signature.size(),
                                reinterpret_cast<const unsigned char*>(message.begin()),
                                message.size()) == 1;
  if (!valid) {
    PAYHOST_FAIL(FAILED, path, ": plugin refused: the signature does not verify with key ",
                 manifest.publicKeyHex, " (", signer->source,
                 "): the signature file was altered or made with another key");
  }
  // Checked after the signature, so that "tampered" is only said of bytes whose manifest is good.
  if (manifest.sha256 != loadedSha256Hex) {
    PAYHOST_FAIL(FAILED, path, ": plugin refused: its bytes are not the ones signed (SHA-256 ",
                 loadedSha256Hex, ", signed ", manifest.sha256, ")");
  }
  return *signer;
}

namespace {

struct Version {
  uint64_t parts[3] = {0, 0, 0};
  kj::ArrayPtr<const char> prerelease;
};

bool parseNumber(kj::ArrayPtr<const char> text, uint64_t& out) {
  if (text.size() == 0 || text.size() > 18) return false;
  if (text.size() > 1 && text[0] == '0') return false;
  out = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    out = out * 10 + (c - '0');
  }
  return true;
}

kj::Maybe<Version> parseVersion(kj::StringPtr text) {
  auto chars = text.asArray();
  size_t end = chars.size();
  for (size_t i = 0; i < chars.size(); ++i) {
    if (chars[i] == '+') {
      end = i;
      break;
    }
  }
  auto withoutBuild = chars.slice(0, end);
  Version version;
  size_t dash = withoutBuild.size();
  for (size_t i = 0; i < withoutBuild.size(); ++i) {
    if (withoutBuild[i] == '-') {
      dash = i;
      break;
    }
  }
  auto core = withoutBuild.slice(0, dash);
  if (dash < withoutBuild.size()) {
    version.prerelease = withoutBuild.slice(dash + 1, withoutBuild.size());
    if (version.prerelease.size() == 0) return nullptr;
  }
  size_t part = 0, start = 0;
  for (size_t i = 0; i <= core.size(); ++i) {
    if (i == core.size() || core[i] == '.') {
      if (part >= 3 || !parseNumber(core.slice(start, i), version.parts[part])) return nullptr;
      ++part;
      start = i + 1;
    }
  }
  if (part != 3) return nullptr;
  return version;
}

int comparePrerelease(kj::ArrayPtr<const char> a, kj::ArrayPtr<const char> b) {
  // No prerelease ranks above any prerelease.
  if (a.size() == 0 || b.size() == 0) return a.size() == 0 ? (b.size() == 0 ? 0 : 1) : -1;
  size_t i = 0, j = 0;
  while (i <= a.size() && j <= b.size()) {
    size_t ie = i, je = j;
    while (ie < a.size() && a[ie] != '.')
      ++ie;
    while (je < b.size() && b[je] != '.')
      ++je;
    auto x = a.slice(i, ie), y = b.slice(j, je);
    uint64_t nx = 0, ny = 0;
    bool xn = parseNumber(x, nx), yn = parseNumber(y, ny);
    int order = 0;
    if (xn && yn) {
      order = nx < ny ? -1 : nx > ny ? 1 : 0;
    } else if (xn != yn) {
      order = xn ? -1 : 1;
    } else {
      int c = memcmp(x.begin(), y.begin(), kj::min(x.size(), y.size()));
      order = c != 0 ? (c < 0 ? -1 : 1) : (x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0);
    }
    if (order != 0) return order;
    bool aDone = ie >= a.size(), bDone = je >= b.size();
    if (aDone || bDone) return aDone == bDone ? 0 : (aDone ? -1 : 1);
    i = ie + 1;
    j = je + 1;
  }
  return 0;
}

}  // namespace

kj::Maybe<int> compareVersions(kj::StringPtr a, kj::StringPtr b) {
  auto x = parseVersion(a);
  auto y = parseVersion(b);
  KJ_IF_MAYBE (vx, x) {
    KJ_IF_MAYBE (vy, y) {
      for (size_t i = 0; i < 3; ++i) {
        if (vx->parts[i] != vy->parts[i]) return vx->parts[i] < vy->parts[i] ? -1 : 1;
      }
      return comparePrerelease(vx->prerelease, vy->prerelease);
    }
  }
  return nullptr;
}

KeyPairPem generateSigningKey() {
  EVP_PKEY* key = nullptr;
  EVP_PKEY_CTX* context = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr);
  KJ_ASSERT(context != nullptr);
  KJ_DEFER(EVP_PKEY_CTX_free(context));
  if (EVP_PKEY_keygen_init(context) != 1 || EVP_PKEY_keygen(context, &key) != 1) {
    PAYHOST_FAIL(FAILED, "OpenSSL could not generate an Ed25519 key");
  }
  KJ_DEFER(EVP_PKEY_free(key));
  auto toPem = [&](bool isPrivate) {
    BIO* bio = BIO_new(BIO_s_mem());
    KJ_ASSERT(bio != nullptr);
    KJ_DEFER(BIO_free(bio));
    int ok = isPrivate ? PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr)
                       : PEM_write_bio_PUBKEY(bio, key);
    KJ_ASSERT(ok == 1, "OpenSSL could not write a PEM key");
    char* data = nullptr;
    long size = BIO_get_mem_data(bio, &data);
    auto text = kj::heapString(data, size);
    OPENSSL_cleanse(data, size);
    return text;
  };
  return {toPem(true), toPem(false)};
}

void writeSigningKey(const KeyPairPem& pair, kj::StringPtr privatePath, kj::StringPtr publicPath) {
  auto write = [](kj::StringPtr path, kj::StringPtr text, mode_t mode) {
    // O_EXCL: never overwrite a key, and never follow a link someone planted at the path.
    int fd = open(path.cStr(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) PAYHOST_FAIL(FAILED, path, ": cannot create key file: ", strerror(errno));
    kj::AutoCloseFd owned(fd);
    // The umask may have taken bits away; never given any.
    KJ_SYSCALL(fchmod(fd, mode), path);
    kj::FdOutputStream(fd).write(text.begin(), text.size());
    KJ_SYSCALL(fsync(fd), path);
  };
  write(privatePath, pair.privatePem, 0600);
  write(publicPath, pair.publicPem, 0644);
}

kj::String signPackageWithPem(kj::StringPtr privatePem, kj::ArrayPtr<const kj::byte> bytes,
                              kj::StringPtr name, kj::StringPtr version) {
  EVP_PKEY* key = readPem(privatePem, true);
  if (key == nullptr) PAYHOST_FAIL(FAILED, "the signing key is not a PEM Ed25519 private key");
  KJ_DEFER(EVP_PKEY_free(key));
  auto sha = sha256Hex(bytes);
  // Checked here too, so that `sign` never writes a file the host would refuse to parse.
  auto message = signedManifest(name, version, sha);
  unsigned char signature[SIGNATURE_BYTES];
  size_t size = sizeof(signature);
  EVP_MD_CTX* context = EVP_MD_CTX_new();
  KJ_ASSERT(context != nullptr);
  KJ_DEFER(EVP_MD_CTX_free(context));
  if (EVP_DigestSignInit(context, nullptr, nullptr, nullptr, key) != 1 ||
      EVP_DigestSign(context, signature, &size,
                     reinterpret_cast<const unsigned char*>(message.begin()),
                     message.size()) != 1) {
    PAYHOST_FAIL(FAILED, "OpenSSL could not sign");
  }
  auto text = formatPackageSignature(name, version, sha, rawPublicHex(key),
                                     kj::encodeHex(kj::arrayPtr(signature, size)));
  (void)parsePackageSignature(text.asBytes(), "(new signature)");
  return text;
}

kj::String signPackage(kj::StringPtr privateKeyPath, kj::ArrayPtr<const kj::byte> bytes,
                       kj::StringPtr name, kj::StringPtr version) {
  auto pem = readSmallFile(privateKeyPath, MAX_PEM_BYTES, S_IRWXG | S_IRWXO, "signing key",
                           "a private key must be readable by its owner only: chmod 0600");
  KJ_DEFER(OPENSSL_cleanse(pem.begin(), pem.size()));
  return signPackageWithPem(pem, bytes, name, version);
}

kj::String publicKeyHexOf(kj::StringPtr pem) {
  EVP_PKEY* key = readPem(pem, false);
  if (key == nullptr) key = readPem(pem, true);
  if (key == nullptr) PAYHOST_FAIL(FAILED, "not a PEM Ed25519 key");
  KJ_DEFER(EVP_PKEY_free(key));
  return rawPublicHex(key);
}

}  // namespace payhost::host
