// The vault plugin through the SDK's test host, with real parts behind it: a real SQLite database
// (the host's SqlPool on a temp file, WAL mode) and a real AES-256-GCM key (the host's KeyStore
// reading a key file). The last tests scan the database, its WAL and every log for the card
// numbers they stored, after a control test shows the scan finds a number when one is there.

#include "host/config/daemon-config.h"
#include "host/log/logger.h"
#include "host/pools/key-store.h"
#include "host/pools/sql-pool.h"
#include "host/pools/worker-pool.h"

#include <payhost/abi.h>
#include <payhost/payments.capnp.h>
#include <payhost/plugin.h>
#include <payhost/testing.h>

#include <capnp/schema.h>
#include <kj/debug.h>
#include <kj/timer.h>

#include <gtest/gtest.h>

#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "card-number.h"
#include "tests/support/test-artifacts.h"

namespace payhost::plugins::vault {
namespace {

namespace fs = std::filesystem;
using host::KeyEntry;
using host::KeyStore;
using host::LogFormat;
using host::LogSink;
using host::SqlPool;
using host::WorkerPool;
using schema::RejectCode;

// A fresh directory, removed with everything in it (or kept for the card-number scan).
class TempDir {
public:
  TempDir() {
    std::string pattern = (testsupport::testTempBase() / "vault-test-XXXXXX").native();
    KJ_ASSERT(mkdtemp(pattern.data()) != nullptr, "mkdtemp failed");
    path = pattern;
  }
  ~TempDir() {
    if (discard) {
      std::error_code ignored;
      fs::remove_all(path, ignored);
    } else {
      testsupport::retireTestDir(path);
    }
  }
  KJ_DISALLOW_COPY(TempDir);

  fs::path path;
  // Removed even when the run keeps test files: it holds a card number planted on purpose.
  bool discard = false;
};

std::string readFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A random AES-256 key in the host's key file format, mode 0600.
fs::path writeKeyFile(const fs::path& dir) {
  unsigned char bytes[32];
  KJ_ASSERT(getrandom(bytes, sizeof(bytes), 0) == sizeof(bytes));
  char hex[65];
  for (size_t i = 0; i < 32; ++i)
    snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
  auto path = dir / "vault.hex";
  std::ofstream(path) << hex << "\n";
  KJ_ASSERT(chmod(path.c_str(), 0600) == 0);
  return path;
}

// The host's pool seen through the SDK's Database, as a plugin in payhostd sees it.
class PoolDatabase final : public Database {
public:
  PoolDatabase(SqlPool& pool, kj::Timer& timer) : pool(pool), timer(timer) {}
  kj::StringPtr name() override { return pool.name(); }
  SqlDialect dialect() override { return pool.dialect(); }
  kj::Promise<void> transactionWork(kj::Function<void(SqlTransaction&)> work) override {
    return pool.transaction("vault", timer, kj::mv(work));
  }

private:
  SqlPool& pool;
  kj::Timer& timer;
};

kj::Array<KeyEntry> keyEntries(const fs::path& file) {
  auto entries = kj::heapArrayBuilder<KeyEntry>(1);
  entries.add(KeyEntry{kj::str("vault"), KeyType::AES_256_GCM, kj::str(file.c_str())});
  return entries.finish();
}

SqlPool::Options poolOptions(const fs::path& file) {
  SqlPool::Options options;
  options.name = kj::str("vault");
  options.dialect = SqlDialect::SQLITE;
  options.target = kj::str(file.c_str());
  options.minConnections = 1;
  options.maxConnections = 2;
  options.leaseWait = 10 * kj::SECONDS;
  return options;
}

// The plugin on the test host over a real database and key. The test host's clock starts at
// 2026-01-01T00:00:00Z.
class Harness {
public:
  Harness()
      : keys(keyEntries(writeKeyFile(dir.path))),
        pool(kj::heap<SqlPool>(poolOptions(databaseFile()), workers, sink)),
        database(*pool, timer),
        host(*payhostPluginDescriptor(), "key = \"vault\"\ndatabase = \"vault\"") {
    host.provideKey("vault", KJ_ASSERT_NONNULL(keys.find("vault")));
    host.provideDatabase("vault", database);
    vault = host.service<schema::Vault>("payments.vault");
    reveal = host.service<schema::VaultReveal>("payments.vault.reveal");
  }
  // The plugin's log records go to a file beside the database, for the card-number scan.
  ~Harness() noexcept(false) {
    std::ofstream out(dir.path / "plugin.log");
    for (auto& record : host.logs())
      out << record.line.cStr() << '\n';
  }

  fs::path databaseFile() const { return dir.path / "vault.sqlite"; }
  fs::path hostLogFile() const { return dir.path / "host.log"; }

  capnp::Response<schema::Vault::TokenizeResults> tokenize(kj::StringPtr pan, uint8_t month = 12,
                                                           uint16_t year = 2030) {
    auto request = vault.tokenizeRequest();
    auto body = request.initRequest();
    body.setPan(pan);
    body.setExpiryMonth(month);
    body.setExpiryYear(year);
    return request.send().wait(host.waitScope());
  }

  kj::String tokenized(kj::StringPtr pan) {
    auto response = tokenize(pan);
    auto result = response.getResult();
    KJ_ASSERT(result.isCard(), result.toString().flatten());
    return kj::heapString(result.getCard().getToken());
  }

  capnp::Response<schema::Vault::DescribeResults> describe(kj::StringPtr token) {
    auto request = vault.describeRequest();
    request.setToken(token);
    return request.send().wait(host.waitScope());
  }

  capnp::Response<schema::Vault::DeleteTokenResults> deleteToken(kj::StringPtr token) {
    auto request = vault.deleteTokenRequest();
    request.setToken(token);
    return request.send().wait(host.waitScope());
  }

  capnp::Response<schema::VaultReveal::RevealResults> revealCard(
      kj::StringPtr token, kj::StringPtr purpose = "authorize txn_0_1") {
    auto request = reveal.revealRequest();
    request.setToken(token);
    request.setPurpose(purpose);
    return request.send().wait(host.waitScope());
  }

  // Runs SQL directly on the vault's database, as an attacker with the file would.
  SqlResult sql(kj::StringPtr statement, std::initializer_list<SqlParam> params = {}) {
    return database.execute(statement, kj::arrayPtr(params.begin(), params.size()))
        .wait(host.waitScope());
  }

  // Every byte a card number could have leaked into: the database, its WAL and shared memory
  // file, the host's log file, and the plugin's log records.
  std::vector<std::pair<std::string, std::string>> leakSurfaces() {
    std::vector<std::pair<std::string, std::string>> surfaces;
    for (auto suffix : {"", "-wal", "-shm", "-journal"}) {
      auto path = fs::path(databaseFile().native() + suffix);
      if (fs::exists(path)) surfaces.emplace_back(path.filename().native(), readFile(path));
    }
    surfaces.emplace_back("host log", readFile(hostLogFile()));
    std::string records;
    for (auto& record : host.logs()) {
      records += record.line.cStr();
      records += '\n';
    }
    surfaces.emplace_back("plugin log", records);
    return surfaces;
  }

  TempDir dir;
  LogSink sink{LogLevel::DEBUG, LogFormat::LOGFMT, kj::str(hostLogFile().c_str())};
  KeyStore keys;
  // Destroyed after the worker pool has joined its threads.
  kj::Own<SqlPool> pool;
  WorkerPool workers{WorkerPool::Options{1, 2, 10 * kj::SECONDS, 1 * kj::SECONDS}, sink};
  kj::TimerImpl timer{kj::origin<kj::TimePoint>()};
  PoolDatabase database;
  payhost::testing::TestHost host;
  schema::Vault::Client vault{nullptr};
  schema::VaultReveal::Client reveal{nullptr};
};

::testing::AssertionResult isRejected(schema::VaultResult::Reader result, RejectCode code) {
  if (result.isRejected() && result.getRejected().getCode() == code) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected rejected " << static_cast<int>(code) << ", got "
                                       << result.toString().flatten().cStr();
}

bool hasDigitRun(const std::string& text, size_t length) {
  size_t run = 0;
  for (char c : text) {
    run = (c >= '0' && c <= '9') ? run + 1 : 0;
    if (run >= length) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------

TEST(Vault, DeclaresTheMerchantAndTheInternalService) {
  auto& plugin = *payhostPluginDescriptor();
  EXPECT_EQ(kj::StringPtr(plugin.name), "vault");
  ASSERT_EQ(plugin.service_count, 2u);
  EXPECT_EQ(kj::StringPtr(plugin.services[0].name), "payments.vault");
  EXPECT_EQ(plugin.services[0].interface_id, capnp::typeId<schema::Vault>());
  EXPECT_EQ(kj::StringPtr(plugin.services[1].name), "payments.vault.reveal");
  EXPECT_EQ(plugin.services[1].interface_id, capnp::typeId<schema::VaultReveal>());
}

// No method of the merchant-facing interface can return a card number: no field reachable from
// its results is called `pan` (walked through the schema, so a new field would be caught).
bool reachesPan(capnp::StructSchema type, std::set<uint64_t>& seen) {
  if (!seen.insert(type.getProto().getId()).second) return false;
  for (auto field : type.getFields()) {
    if (field.getProto().getName() == "pan") return true;
    auto fieldType = field.getType();
    if (fieldType.isStruct() && reachesPan(fieldType.asStruct(), seen)) return true;
    if (fieldType.isList() && fieldType.asList().getElementType().isStruct() &&
        reachesPan(fieldType.asList().getElementType().asStruct(), seen)) {
      return true;
    }
  }
  return false;
}

TEST(Vault, NoMerchantMethodCanReturnACardNumber) {
  for (auto method : capnp::Schema::from<schema::Vault>().getMethods()) {
    std::set<uint64_t> seen;
    EXPECT_FALSE(reachesPan(method.getResultType(), seen)) << method.getProto().getName().cStr();
  }
  std::set<uint64_t> seen;
  EXPECT_TRUE(
      reachesPan(capnp::Schema::from<schema::VaultReveal>().getMethods()[0].getResultType(), seen))
      << "the check must be able to fail";
}

TEST(Vault, TokenizesAndDescribesWithoutTheNumber) {
  Harness vault;
  auto response = vault.tokenize("4111 1111 1111 1111", 12, 2030);
  auto result = response.getResult();
  ASSERT_TRUE(result.isCard()) << result.toString().flatten().cStr();
  auto card = result.getCard();
  EXPECT_TRUE(isVaultToken(card.getToken())) << card.getToken().cStr();
  EXPECT_EQ(card.getBrand(), schema::CardBrand::VISA);
  EXPECT_EQ(card.getLast4(), "1111");
  EXPECT_EQ(card.getExpiryMonth(), 12);
  EXPECT_EQ(card.getExpiryYear(), 2030);

  auto described = vault.describe(card.getToken());
  auto info = described.getResult();
  ASSERT_TRUE(info.isCard()) << info.toString().flatten().cStr();
  EXPECT_EQ(info.getCard().getToken(), card.getToken());
  EXPECT_EQ(info.getCard().getBrand(), schema::CardBrand::VISA);
  EXPECT_EQ(info.getCard().getLast4(), "1111");
  EXPECT_FALSE(hasDigitRun(info.toString().flatten().cStr(), 5));
}

TEST(Vault, TwoTokenizationsOfOneCardGiveTwoTokens) {
  Harness vault;
  auto first = vault.tokenized("5555555555554444");
  auto second = vault.tokenized("5555555555554444");
  EXPECT_NE(first, second);
  EXPECT_EQ(vault.describe(first).getResult().getCard().getBrand(), schema::CardBrand::MASTERCARD);
}

TEST(Vault, RefusesBadCardsWithoutEchoingThem) {
  Harness vault;
  struct Bad {
    const char* pan;
    uint8_t month;
    uint16_t year;
    const char* message;
  };
  for (auto bad : {
           Bad{"4111111111111112", 12, 2030, "Luhn"},
           Bad{"411110000000000", 12, 2030, "13, 16 or 19"},
           Bad{"90000000001", 12, 2030, "12 to 19"},
           Bad{"37828224631000x", 12, 2030, "digits"},
           Bad{"4111111111111111", 12, 2025, "expired"},
           Bad{"4111111111111111", 13, 2030, "expiryMonth"},
           Bad{"4111111111111111", 0, 2030, "expiryMonth"},
           Bad{"4111111111111111", 1, 2057, "30 years"},
       }) {
    auto response = vault.tokenize(bad.pan, bad.month, bad.year);
    auto result = response.getResult();
    ASSERT_TRUE(isRejected(result, RejectCode::INVALID_CARD)) << bad.pan;
    std::string message = result.getRejected().getMessage().cStr();
    EXPECT_NE(message.find(bad.message), std::string::npos) << message;
    EXPECT_FALSE(hasDigitRun(message, 5)) << message;
  }
  for (auto& record : vault.host.logs()) {
    EXPECT_FALSE(hasDigitRun(record.line.cStr(), 5)) << record.line.cStr();
  }
  // Nothing was stored.
  EXPECT_EQ(vault.sql("CREATE TABLE IF NOT EXISTS vault_cards (token TEXT)").changes(), 0u);
  EXPECT_EQ(vault.sql("SELECT count(*) FROM vault_cards").integer(0, 0), 0);
}

TEST(Vault, RevealGivesTheInternalCallerTheNumberAndLeavesAnAuditRecord) {
  Harness vault;
  auto token = vault.tokenized("3782-822463-10005");
  auto response = vault.revealCard(token, "authorize txn_0_7");
  auto result = response.getResult();
  ASSERT_TRUE(result.isCard()) << "reveal failed";
  EXPECT_EQ(result.getCard().getPan(), "378282246310005");
  EXPECT_EQ(result.getCard().getBrand(), schema::CardBrand::AMEX);
  EXPECT_EQ(result.getCard().getExpiryYear(), 2030);

  bool audited = false;
  for (auto& record : vault.host.logs()) {
    if (record.event == "vault.reveal") {
      EXPECT_EQ(record.line, kj::str("vault.reveal token=", token,
                                     " purpose=authorize txn_0_7 outcome=revealed"));
      audited = true;
    }
  }
  EXPECT_TRUE(audited);
}

TEST(Vault, RevealRefusesMalformedTokensPurposesAndUnknownTokens) {
  Harness vault;
  auto token = vault.tokenized("6011111111111117");
  auto check = [&](kj::StringPtr tokenText, kj::StringPtr purpose, RejectCode code) {
    auto response = vault.revealCard(tokenText, purpose);
    auto result = response.getResult();
    EXPECT_TRUE(result.isRejected() && result.getRejected().getCode() == code)
        << tokenText.cStr() << " / " << purpose.cStr();
  };
  check("tok_stolen", "authorize", RejectCode::INVALID_REQUEST);
  check("6011111111111117", "authorize", RejectCode::INVALID_REQUEST);
  check(token, "", RejectCode::INVALID_REQUEST);
  check(token, "copy 6011111111111117", RejectCode::INVALID_REQUEST);
  check(token, "line\nbreak", RejectCode::INVALID_REQUEST);
  check("tok_ABCDEFGHIJKLMNOPQRSTUVWX", "authorize", RejectCode::UNKNOWN_TOKEN);
}

TEST(Vault, DeleteForgetsTheCardForGood) {
  Harness vault;
  auto token = vault.tokenized("3530111333300000");
  auto deleted = vault.deleteToken(token);
  ASSERT_TRUE(deleted.getResult().isDeleted());
  EXPECT_EQ(deleted.getResult().getDeleted(), token);
  EXPECT_TRUE(isRejected(vault.describe(token).getResult(), RejectCode::UNKNOWN_TOKEN));
  EXPECT_TRUE(vault.revealCard(token).getResult().isRejected());
  EXPECT_TRUE(isRejected(vault.deleteToken(token).getResult(), RejectCode::UNKNOWN_TOKEN));
  EXPECT_TRUE(isRejected(vault.deleteToken("tok_x").getResult(), RejectCode::INVALID_REQUEST));
  EXPECT_TRUE(
      isRejected(vault.describe("4111111111111111").getResult(), RejectCode::INVALID_REQUEST));
}

TEST(Vault, ATamperedOrSwappedRowIsRefused) {
  Harness vault;
  auto first = vault.tokenized("4111111111111111");
  auto second = vault.tokenized("5555555555554444");
  // Sealed with the token as associated data: the first card's ciphertext under the second
  // token does not decrypt.
  vault.sql(
      "UPDATE vault_cards SET sealed = (SELECT sealed FROM vault_cards WHERE token = $1) "
      "WHERE token = $2",
      {first, second});
  EXPECT_ANY_THROW(vault.revealCard(second));
  // A flipped byte in the first card's ciphertext is refused too.
  auto rows = vault.sql("SELECT sealed FROM vault_cards WHERE token = $1", {first});
  auto sealed = kj::heapArray(rows.blob(0, 0));
  sealed[sealed.size() / 2] ^= 1;
  vault.sql("UPDATE vault_cards SET sealed = $1 WHERE token = $2", {sealed, first});
  EXPECT_ANY_THROW(vault.revealCard(first));
  bool logged = false;
  for (auto& record : vault.host.logs()) {
    if (record.level == LogLevel::ERROR && record.event == "vault.reveal") logged = true;
  }
  EXPECT_TRUE(logged);
}

// The scan used below finds a card number stored in the clear: the control for the next test.
TEST(Vault, TheLeakScanFindsACardNumberStoredInTheClear) {
  Harness vault;
  vault.tokenized("4111111111111111");
  vault.sql("CREATE TABLE careless (pan TEXT)");
  vault.sql("INSERT INTO careless (pan) VALUES ($1)", {"4000056655665556"});
  vault.dir.discard = true;
  bool found = false;
  for (auto& [name, bytes] : vault.leakSurfaces()) {
    if (bytes.find("4000056655665556") != std::string::npos) found = true;
  }
  EXPECT_TRUE(found);
}

TEST(Vault, NoCardNumberInTheDatabaseItsWalOrAnyLog) {
  Harness vault;
  std::vector<std::string> pans = {"4000056655665556", "5200828282828210", "371449635398431",
                                   "6011000990139424", "3566002020360505", "4222222222222"};
  std::vector<kj::String> tokens;
  for (auto& pan : pans) {
    tokens.push_back(vault.tokenized(kj::StringPtr(pan.c_str())));
    ASSERT_TRUE(vault.describe(tokens.back()).getResult().isCard());
    ASSERT_EQ(vault.revealCard(tokens.back()).getResult().getCard().getPan(), pan.c_str());
  }
  vault.tokenize("4000 0566 5566 5557");  // refused (Luhn): must not leak either
  vault.deleteToken(tokens[0]);
  pans.push_back("4000056655665557");

  auto surfaces = vault.leakSurfaces();
  ASSERT_GE(surfaces.size(), 3u);
  bool sawWal = false;
  for (auto& [name, bytes] : surfaces) {
    if (name == "vault.sqlite-wal" && !bytes.empty()) sawWal = true;
    for (auto& pan : pans) {
      // The whole number, and its first 12 digits (last4 may be shown; the rest may not).
      EXPECT_EQ(bytes.find(pan), std::string::npos) << "card number found in " << name;
      EXPECT_EQ(bytes.find(pan.substr(0, 12)), std::string::npos) << "digits found in " << name;
    }
  }
  EXPECT_TRUE(sawWal) << "the WAL was expected to hold the recent commits";
}

}  // namespace
}  // namespace payhost::plugins::vault
