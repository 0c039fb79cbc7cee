// KeyStore: real OpenSSL keys from real files; round trips, tampering, wrong use, bad files.
#include "host/pools/key-store.h"

#include <kj/debug.h>
#include <kj/encoding.h>

#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace payhost::host {
namespace {

// The exception `func` throws (a test failure if none), for checking its type and message.
template <typename Func>
kj::Exception thrownBy(Func&& func) {
  KJ_IF_MAYBE (exception, kj::runCatchingExceptions(kj::fwd<Func>(func))) {
    return kj::mv(*exception);
  }
  ADD_FAILURE() << "no exception was thrown";
  return KJ_EXCEPTION(FAILED, "(none thrown)");
}

#define EXPECT_THROW_CONTAINING(text, code)                                              \
  do {                                                                                   \
    auto thrown = thrownBy([&]() { code; });                                             \
    EXPECT_NE(std::string(thrown.getDescription().cStr()).find(text), std::string::npos) \
        << thrown.getDescription().cStr();                                               \
  } while (false)

kj::ArrayPtr<const kj::byte> bytes(kj::StringPtr text) {
  return text.asBytes();
}

class KeyStoreTest : public testing::Test {
protected:
  ~KeyStoreTest() noexcept override {}

  void SetUp() override {
    char templ[] = "/tmp/payhost-keys-XXXXXX";
    ASSERT_NE(mkdtemp(templ), nullptr);
    dir = templ;
  }
  void TearDown() override { std::filesystem::remove_all(dir); }

  kj::String write(const std::string& name, const std::string& content, mode_t mode = 0600) {
    auto path = dir + "/" + name;
    std::ofstream(path) << content;
    chmod(path.c_str(), mode);
    return kj::heapString(path.c_str());
  }

  kj::String ed25519Pem() {
    auto path = dir + "/ed25519.pem";
    auto command = "openssl genpkey -algorithm ed25519 -out " + path + " 2>/dev/null";
    EXPECT_EQ(system(command.c_str()), 0);
    chmod(path.c_str(), 0600);
    return kj::heapString(path.c_str());
  }

  kj::Vector<KeyEntry> entries;
  void add(kj::StringPtr name, KeyType type, kj::String file) {
    entries.add(KeyEntry{kj::heapString(name), type, kj::mv(file)});
  }

  std::string dir;
};

const char AES_HEX[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

TEST_F(KeyStoreTest, AesGcmRoundTripsAndRefusesTampering) {
  add("vault", KeyType::AES_256_GCM, write("vault.hex", AES_HEX));
  KeyStore store(entries);
  auto& key = KJ_ASSERT_NONNULL(store.find("vault"));
  auto sealed = key.encrypt(bytes("4111 card data"), bytes("merchant-1"));
  ASSERT_EQ(sealed.size(), 12u + 14u + 16u);
  auto opened = KJ_ASSERT_NONNULL(key.tryDecrypt(sealed, bytes("merchant-1")));
  EXPECT_EQ(kj::heapString(opened.asChars()), "4111 card data");
  // Two encryptions of the same plaintext differ (fresh nonce).
  EXPECT_NE(sealed, key.encrypt(bytes("4111 card data"), bytes("merchant-1")));
  // Any flipped bit, in nonce, ciphertext or tag, or other associated data: refused.
  for (size_t i : {size_t{0}, size_t{12}, sealed.size() - 1}) {
    auto tampered = kj::heapArray<kj::byte>(sealed.asPtr());
    tampered[i] ^= 1;
    EXPECT_EQ(key.tryDecrypt(tampered, bytes("merchant-1")), nullptr) << "byte " << i;
  }
  EXPECT_EQ(key.tryDecrypt(sealed, bytes("merchant-2")), nullptr);
  EXPECT_EQ(key.tryDecrypt(sealed.slice(0, 20), bytes("merchant-1")), nullptr);
}

TEST_F(KeyStoreTest, Ed25519SignsAndVerifies) {
  add("signing", KeyType::ED25519, ed25519Pem());
  KeyStore store(entries);
  auto& key = KJ_ASSERT_NONNULL(store.find("signing"));
  auto signature = key.sign(bytes("settlement batch 42"));
  EXPECT_EQ(signature.size(), 64u);
  EXPECT_TRUE(key.verify(bytes("settlement batch 42"), signature));
  EXPECT_FALSE(key.verify(bytes("settlement batch 43"), signature));
  signature[5] ^= 0x40;
  EXPECT_FALSE(key.verify(bytes("settlement batch 42"), signature));
}

TEST_F(KeyStoreTest, HmacMatchesOpenssl) {
  add("mac", KeyType::HMAC_SHA256, write("mac.hex", AES_HEX));
  KeyStore store(entries);
  auto mac = KJ_ASSERT_NONNULL(store.find("mac")).hmac(bytes("abc"));
  // openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1f <<< -n abc
  auto path = write("input", "abc");
  auto command = "openssl dgst -sha256 -mac HMAC -macopt hexkey:" + std::string(AES_HEX, 64) +
                 " -r " + path.cStr();
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char expected[65] = {0};
  ASSERT_EQ(fread(expected, 1, 64, pipe), 64u);
  pclose(pipe);
  EXPECT_EQ(kj::encodeHex(mac), kj::StringPtr(expected));
}

TEST_F(KeyStoreTest, AHandleRefusesOperationsOfAnotherKeyType) {
  add("vault", KeyType::AES_256_GCM, write("vault.hex", AES_HEX));
  KeyStore store(entries);
  auto& key = KJ_ASSERT_NONNULL(store.find("vault"));
  EXPECT_THROW_CONTAINING("key 'vault' is an aes-256-gcm key; it cannot sign",
                          key.sign(bytes("x")));
  EXPECT_THROW_CONTAINING("cannot compute an HMAC", key.hmac(bytes("x")));
  EXPECT_EQ(store.find("other"), nullptr);
}

TEST_F(KeyStoreTest, RefusesAKeyFileReadableByOthers) {
  add("vault", KeyType::AES_256_GCM, write("vault.hex", AES_HEX, 0644));
  EXPECT_THROW_CONTAINING("is readable by group or others (mode 0644); make it 0600 or 0400",
                          KeyStore store(entries));
}

TEST_F(KeyStoreTest, RefusesMalformedKeyFilesNamingKeyAndFile) {
  add("short", KeyType::AES_256_GCM, write("short.hex", "00112233\n"));
  EXPECT_THROW_CONTAINING("key 'short': ", KeyStore store(entries));
  entries.clear();
  add("pem", KeyType::ED25519, write("not.pem", "-----BEGIN NOTHING-----\n"));
  EXPECT_THROW_CONTAINING("is not a PEM Ed25519 private key", KeyStore store(entries));
  entries.clear();
  add("missing", KeyType::HMAC_SHA256, kj::str(dir.c_str(), "/nope.hex"));
  EXPECT_THROW_CONTAINING("No such file or directory", KeyStore store(entries));
}

}  // namespace
}  // namespace payhost::host
