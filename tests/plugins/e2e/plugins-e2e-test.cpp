// The vault, fraud-screen and FX plugins loaded by a real payhostd process (their real .so files,
// a real key file, SQLite under the daemon's data directory), called over TCP through the
// Gateway. The vault test then scans the daemon's log and every database file for the card
// numbers it stored.
#include <payhost/payments.capnp.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "daemon-process.h"

namespace payhost::test {
namespace {

namespace fs = std::filesystem;

kj::String plugin(kj::StringPtr name) {
  return kj::str(PAYHOST_PLUGIN_BUILD_DIR, "/", name, "/", name, ".so");
}

std::string readAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

template <typename Interface>
typename Interface::Client serviceOf(Connection<schema::Gateway>& gateway, kj::StringPtr name) {
  auto request = gateway.client.getServiceRequest();
  request.setName(name);
  return request.send().getService().template castAs<Interface>();
}

class Plugins : public EndToEnd {
protected:
  kj::Own<DaemonProcess> start() {
    auto key = dir.file("vault.hex");
    writeFile(key, "8f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0\n");
    chmod(key.cStr(), 0600);
    DaemonOptions options;
    options.shards = 2;
    options.dataDir = dir.file("data");
    options.extra = kj::str("[keys.vault]\ntype = \"aes-256-gcm\"\nfile = \"", key,
                            "\"\n[databases.vault]\ndriver = \"sqlite\"\n");
    options.plugins =
        kj::str("[[plugin]]\npath = \"", plugin("vault"), "\"\nkeys = [\"vault\"]\n",
                "databases = [\"vault\"]\n", "[[plugin]]\npath = \"", plugin("fraud-screen"),
                "\"\n[plugin.config]\n", "[plugin.config.amount_limits]\nEUR = 100000\n",
                "[[plugin]]\npath = \"", plugin("fx"), "\"\n[plugin.config.rates]\n",
                "JPY_USD = \"0.006655\"\n");
    return kj::heap<DaemonProcess>(kj::mv(options));
  }

  TempDir dir;
};

TEST_F(Plugins, VaultTokenizesThroughPayhostdAndNoNumberReachesLogsOrFiles) {
  const char* pans[] = {"4000056655665556", "5200828282828210", "371449635398431"};
  {
    auto daemon = start();
    Connection<schema::Gateway> gateway(io, daemon->tcpAddress());
    auto vault = serviceOf<schema::Vault>(gateway, "payments.vault");
    auto reveal = serviceOf<schema::VaultReveal>(gateway, "payments.vault.reveal");
    for (auto pan : pans) {
      auto request = vault.tokenizeRequest();
      auto body = request.initRequest();
      body.setPan(pan);
      body.setExpiryMonth(12);
      body.setExpiryYear(2031);
      auto response = await(request.send());
      ASSERT_TRUE(response.getResult().isCard())
          << response.getResult().toString().flatten().cStr();
      auto token = kj::heapString(response.getResult().getCard().getToken());

      auto describe = vault.describeRequest();
      describe.setToken(token);
      auto described = await(describe.send());
      ASSERT_TRUE(described.getResult().isCard());
      EXPECT_EQ(described.getResult().getCard().getLast4(),
                kj::StringPtr(pan).slice(strlen(pan) - 4));

      auto revealRequest = reveal.revealRequest();
      revealRequest.setToken(token);
      revealRequest.setPurpose("e2e check");
      auto revealed = await(revealRequest.send());
      ASSERT_TRUE(revealed.getResult().isCard());
      EXPECT_EQ(revealed.getResult().getCard().getPan(), pan);
    }
    auto refused = vault.tokenizeRequest();
    refused.initRequest().setPan("4000056655665557");
    EXPECT_TRUE(await(refused.send()).getResult().isRejected());

    // While the daemon runs, the recent commits sit in the WAL: scan it now, and the rest below.
    auto wal = fs::path(dir.file("data").cStr()) / "vault.sqlite-wal";
    ASSERT_TRUE(fs::exists(wal));
    auto walBytes = readAll(wal);
    for (auto pan : pans)
      EXPECT_EQ(walBytes.find(pan), std::string::npos) << "card number in the WAL";
    daemon->readAvailableLog();
    auto log = std::string(daemon->logText().cStr());
    EXPECT_NE(log.find("vault.tokenize"), std::string::npos);
    EXPECT_NE(log.find("vault.reveal"), std::string::npos);
    for (auto pan :
         {"4000056655665556", "5200828282828210", "371449635398431", "4000056655665557"}) {
      EXPECT_EQ(log.find(pan), std::string::npos) << "card number in the daemon's log";
    }
  }
  size_t scanned = 0;
  for (auto& entry : fs::recursive_directory_iterator(dir.path().cStr())) {
    if (!entry.is_regular_file()) continue;
    auto bytes = readAll(entry.path());
    ++scanned;
    for (auto pan : pans) {
      EXPECT_EQ(bytes.find(pan), std::string::npos) << "card number in " << entry.path();
      EXPECT_EQ(bytes.find(std::string(pan).substr(0, 12)), std::string::npos)
          << "card digits in " << entry.path();
    }
  }
  EXPECT_GE(scanned, 2u);  // at least the key file and the database
}

TEST_F(Plugins, FraudScreenAndFxAnswerThroughPayhostd) {
  auto daemon = start();
  Connection<schema::Gateway> gateway(io, daemon->tcpAddress());

  auto fraud = serviceOf<schema::FraudScreen>(gateway, "payments.fraud");
  auto screen = fraud.screenRequest();
  auto body = screen.initRequest();
  body.setMerchantId("m_1");
  body.initAmount().setMinorUnits(200000);
  body.getAmount().setCurrency("EUR");
  body.setCardToken("tok_e2e");
  body.setCardCountry("DE");
  body.setIpCountry("US");
  auto verdict = await(screen.send());
  EXPECT_EQ(verdict.getVerdict().getDecision(), schema::FraudDecision::DENY);
  EXPECT_EQ(verdict.getVerdict().getScore(), 700u);

  auto fx = serviceOf<schema::Fx>(gateway, "payments.fx");
  auto quote = fx.quoteRequest();
  quote.initSource().setMinorUnits(1000);
  quote.getSource().setCurrency("JPY");
  quote.setTargetCurrency("USD");
  auto quoted = await(quote.send());
  ASSERT_TRUE(quoted.getResult().isQuote()) << quoted.getResult().toString().flatten().cStr();
  EXPECT_EQ(quoted.getResult().getQuote().getTarget().getMinorUnits(), 666);
  auto convert = fx.convertRequest();
  convert.setQuoteId(quoted.getResult().getQuote().getQuoteId());
  auto converted = await(convert.send());
  ASSERT_TRUE(converted.getResult().isConverted())
      << converted.getResult().toString().flatten().cStr();
  EXPECT_EQ(converted.getResult().getConverted().getTarget().getMinorUnits(), 666);
}

}  // namespace
}  // namespace payhost::test
