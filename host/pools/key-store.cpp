#include "host/pools/key-store.h"

#include "host/util/errors.h"

#include <kj/debug.h>
#include <kj/encoding.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace payhost {

namespace host {

namespace {

constexpr size_t NONCE_BYTES = 12;
constexpr size_t TAG_BYTES = 16;

[[noreturn]] void opensslFailed(kj::StringPtr what) {
  PAYHOST_FAIL(FAILED, "OpenSSL failed to ", what);
}

// Key bytes held by the host, wiped when freed.
class Secret {
public:
  explicit Secret(kj::Array<kj::byte> bytes) : bytes(kj::mv(bytes)) {}
  ~Secret() { OPENSSL_cleanse(bytes.begin(), bytes.size()); }
  KJ_DISALLOW_COPY(Secret);
  kj::ArrayPtr<const kj::byte> get() const { return bytes; }

private:
  kj::Array<kj::byte> bytes;
};

class Handle final : public KeyHandle {
public:
  Handle(kj::String name, KeyType type) : name_(kj::mv(name)), type_(type) {}

  kj::StringPtr name() const override { return name_; }
  KeyType type() const override { return type_; }

  kj::Array<kj::byte> sign(kj::ArrayPtr<const kj::byte> message) override {
    require(KeyType::ED25519, "sign");
    auto context = EVP_MD_CTX_new();
    KJ_DEFER(EVP_MD_CTX_free(context));
    size_t size = 64;
    auto signature = kj::heapArray<kj::byte>(size);
    if (context == nullptr ||
        EVP_DigestSignInit(context, nullptr, nullptr, nullptr, privateKey) != 1 ||
        EVP_DigestSign(context, signature.begin(), &size, message.begin(), message.size()) != 1) {
      opensslFailed("sign");
    }
    return signature;
  }

  bool verify(kj::ArrayPtr<const kj::byte> message,
              kj::ArrayPtr<const kj::byte> signature) override {
    require(KeyType::ED25519, "verify");
    auto context = EVP_MD_CTX_new();
    KJ_DEFER(EVP_MD_CTX_free(context));
    if (context == nullptr ||
        EVP_DigestVerifyInit(context, nullptr, nullptr, nullptr, privateKey) != 1) {
      opensslFailed("start verifying");
    }
    return EVP_DigestVerify(context, signature.begin(), signature.size(), message.begin(),
                            message.size()) == 1;
  }

  kj::Array<kj::byte> encrypt(kj::ArrayPtr<const kj::byte> plaintext,
                              kj::ArrayPtr<const kj::byte> associatedData) override {
    require(KeyType::AES_256_GCM, "encrypt");
    auto sealed = kj::heapArray<kj::byte>(NONCE_BYTES + plaintext.size() + TAG_BYTES);
    if (RAND_bytes(sealed.begin(), NONCE_BYTES) != 1) opensslFailed("make a nonce");
    auto context = EVP_CIPHER_CTX_new();
    KJ_DEFER(EVP_CIPHER_CTX_free(context));
    int n = 0;
    auto out = sealed.begin() + NONCE_BYTES;
    if (context == nullptr ||
        EVP_EncryptInit_ex(context, EVP_aes_256_gcm(), nullptr, secret->get().begin(),
                           sealed.begin()) != 1 ||
        EVP_EncryptUpdate(context, nullptr, &n, associatedData.begin(), associatedData.size()) !=
            1 ||
        EVP_EncryptUpdate(context, out, &n, plaintext.begin(), plaintext.size()) != 1 ||
        EVP_EncryptFinal_ex(context, out + n, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, sealed.end() - TAG_BYTES) !=
            1) {
      opensslFailed("encrypt");
    }
    return sealed;
  }

  kj::Maybe<kj::Array<kj::byte>> tryDecrypt(kj::ArrayPtr<const kj::byte> sealed,
                                            kj::ArrayPtr<const kj::byte> associatedData) override {
    require(KeyType::AES_256_GCM, "decrypt");
    if (sealed.size() < NONCE_BYTES + TAG_BYTES) return nullptr;
    auto ciphertext = sealed.slice(NONCE_BYTES, sealed.size() - TAG_BYTES);
    auto plaintext = kj::heapArray<kj::byte>(ciphertext.size());
    auto context = EVP_CIPHER_CTX_new();
    KJ_DEFER(EVP_CIPHER_CTX_free(context));
    int n = 0;
    if (context == nullptr ||
        EVP_DecryptInit_ex(context, EVP_aes_256_gcm(), nullptr, secret->get().begin(),
                           sealed.begin()) != 1 ||
        EVP_DecryptUpdate(context, nullptr, &n, associatedData.begin(), associatedData.size()) !=
            1 ||
        EVP_DecryptUpdate(context, plaintext.begin(), &n, ciphertext.begin(), ciphertext.size()) !=
            1 ||
        EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_TAG, TAG_BYTES,
                            const_cast<kj::byte*>(sealed.end() - TAG_BYTES)) != 1) {
      opensslFailed("decrypt");
    }
    // A wrong tag (altered ciphertext, nonce or associated data) fails here.
    if (EVP_DecryptFinal_ex(context, plaintext.begin() + n, &n) != 1) return nullptr;
    return kj::mv(plaintext);
  }

  kj::Array<kj::byte> hmac(kj::ArrayPtr<const kj::byte> message) override {
    require(KeyType::HMAC_SHA256, "compute an HMAC");
    auto digest = kj::heapArray<kj::byte>(32);
    unsigned int size = 0;
    auto key = secret->get();
    if (HMAC(EVP_sha256(), key.begin(), key.size(), message.begin(), message.size(), digest.begin(),
             &size) == nullptr) {
      opensslFailed("compute an HMAC");
    }
    return digest;
  }

  ~Handle() noexcept(false) {
    if (privateKey != nullptr) EVP_PKEY_free(privateKey);
  }

  EVP_PKEY* privateKey = nullptr;
  kj::Maybe<kj::Own<Secret>> secretStorage;
  const Secret* secret = nullptr;

private:
  void require(KeyType wanted, kj::StringPtr operation) const {
    if (type_ != wanted) {
      PAYHOST_FAIL(FAILED, "key '", name_, "' is an ", keyTypeName(type_), " key; it cannot ",
                   operation, " (that needs an ", keyTypeName(wanted), " key)");
    }
  }

  kj::String name_;
  KeyType type_;
};

std::string readKeyFile(const KeyEntry& key) {
  struct stat info;
  if (stat(key.file.cStr(), &info) != 0) {
    PAYHOST_FAIL(FAILED, "key '", key.name, "': ", key.file, ": ", strerror(errno));
  }
  if ((info.st_mode & 077) != 0) {
    char mode[8];
    snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(info.st_mode & 0777));
    PAYHOST_FAIL(FAILED, "key '", key.name, "': ", key.file,
                 " is readable by group or others (mode ", mode, "); make it 0600 or 0400");
  }
  std::ifstream in(key.file.cStr());
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

kj::Array<kj::byte> decodeHexKey(const KeyEntry& key, std::string text, size_t minBytes,
                                 size_t maxBytes) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.pop_back();
  }
  auto decoded = kj::decodeHex(kj::ArrayPtr<const char>(text.data(), text.size()));
  OPENSSL_cleanse(text.data(), text.size());
  if (decoded.hadErrors || decoded.size() < minBytes || decoded.size() > maxBytes) {
    PAYHOST_FAIL(FAILED, "key '", key.name, "': ", key.file, " must hold ", minBytes * 2,
                 maxBytes == minBytes ? kj::str("") : kj::str(" or more"),
                 " hexadecimal characters for a ", keyTypeName(key.type), " key");
  }
  return kj::mv(decoded);
}

}  // namespace

KeyStore::KeyStore(kj::ArrayPtr<const KeyEntry> keys) {
  for (auto& key : keys) {
    auto handle = kj::heap<Handle>(kj::heapString(key.name), key.type);
    auto text = readKeyFile(key);
    switch (key.type) {
      case KeyType::ED25519: {
        auto bio = BIO_new_mem_buf(text.data(), static_cast<int>(text.size()));
        KJ_DEFER(BIO_free(bio));
        handle->privateKey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
        OPENSSL_cleanse(text.data(), text.size());
        if (handle->privateKey == nullptr || EVP_PKEY_id(handle->privateKey) != EVP_PKEY_ED25519) {
          PAYHOST_FAIL(FAILED, "key '", key.name, "': ", key.file,
                       " is not a PEM Ed25519 private key");
        }
        break;
      }
      case KeyType::AES_256_GCM:
      case KeyType::HMAC_SHA256: {
        size_t minBytes = 32;
        size_t maxBytes = key.type == KeyType::AES_256_GCM ? 32 : 1024;
        auto secret = kj::heap<Secret>(decodeHexKey(key, kj::mv(text), minBytes, maxBytes));
        handle->secret = secret.get();
        handle->secretStorage = kj::mv(secret);
        break;
      }
    }
    handles.add(kj::mv(handle));
  }
}

KeyStore::~KeyStore() noexcept = default;

kj::Maybe<KeyHandle&> KeyStore::find(kj::StringPtr name) {
  for (auto& handle : handles) {
    if (handle->name() == name) return *handle;
  }
  return nullptr;
}

}  // namespace host
}  // namespace payhost
