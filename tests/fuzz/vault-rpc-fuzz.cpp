// libFuzzer target: the RPC entries of the vault ("payments.vault": tokenize, describe,
// deleteToken; "payments.vault.reveal": reveal). The input's first byte picks one of those four
// methods, the rest is its parameters (see rpc-fuzz.h). Behind the plugin are real parts: a SQLite
// file through the SDK test host (payhostd's settings) and an AES-256-GCM key read by the host's
// own key store from a 0600 key file, both in a temporary directory removed at exit.
//
// With PAYHOST_FUZZ_WRITE_SEEDS=DIR set, it writes valid calls to DIR and exits (that is how
// tests/fuzz/corpus/vault-rpc was made: scripts/fuzz.sh --seeds).
#include "host/pools/key-store.h"

#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <kj/debug.h>

#include <sys/random.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "rpc-fuzz.h"

namespace {

namespace fs = std::filesystem;
using payhost::schema::Vault;
using payhost::schema::VaultReveal;

// A random AES-256 key in the host's key file format (hex), mode 0600, in a fresh directory.
fs::path writeKeyFile() {
  std::string pattern = (fs::temp_directory_path() / "payhost-vault-fuzz-XXXXXX").native();
  KJ_ASSERT(mkdtemp(pattern.data()) != nullptr, "mkdtemp failed");
  unsigned char bytes[32];
  KJ_ASSERT(getrandom(bytes, sizeof(bytes), 0) == sizeof(bytes));
  char hex[65];
  for (size_t i = 0; i < 32; ++i)
    snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
  auto path = fs::path(pattern) / "vault.hex";
  std::ofstream(path) << hex << "\n";
  KJ_ASSERT(chmod(path.c_str(), 0600) == 0);
  return path;
}

kj::Array<payhost::host::KeyEntry> keyEntries(const fs::path& file) {
  auto entries = kj::heapArrayBuilder<payhost::host::KeyEntry>(1);
  entries.add(payhost::host::KeyEntry{kj::str("vault"), payhost::KeyType::AES_256_GCM,
                                      kj::str(file.c_str())});
  return entries.finish();
}

struct Target {
  Target() {
    // The key store has read the file; nothing else needs the directory.
    std::error_code ignored;
    fs::remove_all(keyFile.parent_path(), ignored);
    host.provideKey("vault", KJ_ASSERT_NONNULL(keys.find("vault")));
    host.sqliteDatabase("vault");
  }

  fs::path keyFile = writeKeyFile();
  payhost::host::KeyStore keys{keyEntries(keyFile)};
  payhost::testing::TestHost host{*payhostPluginDescriptor(),
                                  "key = \"vault\"\ndatabase = \"vault\""};
  capnp::Capability::Client vault = host.serviceCapability("payments.vault");
  capnp::Capability::Client reveal = host.serviceCapability("payments.vault.reveal");
};

void writeSeeds(const char* dir) {
  {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<Vault::TokenizeParams>().initRequest();
    request.setPan("4111 1111 1111 1111");
    request.setExpiryMonth(12);
    request.setExpiryYear(2030);
    payhost::fuzz::writeSeed(dir, 0, message, "tokenize-visa");
  }
  {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<Vault::TokenizeParams>().initRequest();
    request.setPan("378282246310005");
    request.setExpiryMonth(1);
    request.setExpiryYear(2026);
    payhost::fuzz::writeSeed(dir, 0, message, "tokenize-amex");
  }
  {
    capnp::MallocMessageBuilder message;
    message.initRoot<Vault::DescribeParams>().setToken("tok_abcdefghijklmnopqrstuvwx");
    payhost::fuzz::writeSeed(dir, 1, message, "describe");
  }
  {
    capnp::MallocMessageBuilder message;
    message.initRoot<Vault::DeleteTokenParams>().setToken("tok_abcdefghijklmnopqrstuvwx");
    payhost::fuzz::writeSeed(dir, 2, message, "delete");
  }
  {
    capnp::MallocMessageBuilder message;
    auto params = message.initRoot<VaultReveal::RevealParams>();
    params.setToken("tok_abcdefghijklmnopqrstuvwx");
    params.setPurpose("authorize txn_0_1");
    payhost::fuzz::writeSeed(dir, 3, message, "reveal");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  payhost::fuzz::writeSeedsIfAsked(writeSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Rows stored by earlier inputs are there for later ones.
  auto target = &payhost::fuzz::recycled<Target>();
  if (size < 1) return 0;
  uint16_t method = data[0] % 4;
  if (method < 3) {
    payhost::fuzz::callMethod(target->host, target->vault, capnp::typeId<Vault>(), method, data + 1,
                              size - 1);
  } else {
    payhost::fuzz::callMethod(target->host, target->reveal, capnp::typeId<VaultReveal>(), 0,
                              data + 1, size - 1);
  }
  return 0;
}
