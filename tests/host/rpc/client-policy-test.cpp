#include "host/rpc/client-policy.h"

#include "host/rpc/tls-server.h"

#include <kj/debug.h>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

namespace payhost::host {
namespace {

AccessRule rule(kj::StringPtr identity, std::initializer_list<kj::StringPtr> services,
                std::initializer_list<kj::StringPtr> methods = {}) {
  AccessRule result;
  result.identity = kj::heapString(identity);
  for (auto service : services)
    result.services.add(kj::heapString(service));
  for (auto method : methods)
    result.methods.add(kj::heapString(method));
  return result;
}

TEST(AccessPolicy, DeniesWhatNoRuleGrants) {
  AccessRule rules[] = {rule("merchant-a", {"payments.card"}, {"authorize", "capture"}),
                        rule("merchant-a", {"payments.screen"}), rule("ops", {"*"}, {"sync"})};
  AccessPolicy policy(rules);
  EXPECT_TRUE(policy.mayCall("merchant-a", "payments.card", "authorize"));
  EXPECT_TRUE(policy.mayCall("merchant-a", "payments.card", "capture"));
  EXPECT_FALSE(policy.mayCall("merchant-a", "payments.card", "refund"));
  EXPECT_TRUE(policy.mayCall("merchant-a", "payments.screen", "screen"));
  EXPECT_FALSE(policy.mayCall("merchant-a", "payments.ledger", "post"));
  EXPECT_TRUE(policy.mayUseService("merchant-a", "payments.card"));
  EXPECT_FALSE(policy.mayUseService("merchant-a", "payments.ledger"));
  // Identities are compared whole and case-sensitively.
  EXPECT_FALSE(policy.mayCall("Merchant-A", "payments.card", "authorize"));
  EXPECT_FALSE(policy.mayCall("merchant-", "payments.card", "authorize"));
  EXPECT_TRUE(policy.mayCall("ops", "payments.anything", "sync"));
  EXPECT_FALSE(policy.mayCall("ops", "payments.anything", "refund"));
  EXPECT_FALSE(policy.mayCall("anonymous", "payments.card", "authorize"));
}

TEST(AccessPolicy, NoRulesDenyEverything) {
  AccessPolicy policy(nullptr);
  EXPECT_FALSE(policy.mayUseService("merchant-a", "payments.card"));
  EXPECT_FALSE(policy.mayCall("merchant-a", "payments.card", "authorize"));
}

std::string failureOf(kj::Function<void()> f) {
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { f(); })) {
    return e->getDescription().cStr();
  }
  return "";
}

TEST(TlsServer, RefusesKeyFilesOthersCanRead) {
  char dir[] = "/tmp/tls-server-test-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  auto key = std::string(dir) + "/server.key";
  int fd = open(key.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  close(fd);
  EXPECT_EQ(failureOf([&]() { checkPrivateKeyFile(key.c_str(), "tls.private_key"); }), "");
  chmod(key.c_str(), 0640);
  EXPECT_EQ(failureOf([&]() { checkPrivateKeyFile(key.c_str(), "tls.private_key"); }), "");
  for (mode_t mode : {0644, 0604, 0660, 0602}) {
    chmod(key.c_str(), mode);
    EXPECT_NE(failureOf([&]() {
                checkPrivateKeyFile(key.c_str(), "tls.private_key");
              }).find("lets other users read or replace the private key"),
              std::string::npos)
        << std::oct << mode;
  }
  TlsConfig config;
  config.certificate = kj::str(dir, "/missing.pem");
  config.privateKey = kj::heapString(key.c_str());
  chmod(key.c_str(), 0600);
  EXPECT_NE(failureOf([&]() { TlsServer server(config); }).find("tls.certificate"),
            std::string::npos);
  unlink(key.c_str());
  rmdir(dir);
}

}  // namespace
}  // namespace payhost::host
