#include "host/metrics/metrics-server.h"

#include <kj/debug.h>

#include <gtest/gtest.h>

#include <string>

namespace payhost::host {
namespace {

class FakeSource final : public MetricsSource {
public:
  kj::String render() override { return kj::str("up 1\n"); }
  kj::Maybe<kj::String> notReady() override {
    if (ready) return nullptr;
    return kj::str("host is draining");
  }
  bool ready = true;
};

struct Reply {
  unsigned status;
  std::string contentType;
  std::string body;
};

class MetricsServerTest : public testing::Test {
protected:
  MetricsServerTest()
      : receiver(
            io.provider->getNetwork().parseAddress("127.0.0.1:0").wait(io.waitScope)->listen()),
        server(io.provider->getTimer(), source),
        serving(server.listen(*receiver).eagerlyEvaluate(nullptr)) {}
  // KJ's destructors may throw; a test's may not.
  ~MetricsServerTest() noexcept override {}

  Reply get(kj::StringPtr path, kj::HttpMethod method = kj::HttpMethod::GET) {
    auto address = io.provider->getNetwork()
                       .parseAddress(kj::str("127.0.0.1:", receiver->getPort()))
                       .wait(io.waitScope);
    auto client = kj::newHttpClient(io.provider->getTimer(), table, *address);
    kj::HttpHeaders headers(table);
    auto response = client->request(method, path, headers).response.wait(io.waitScope);
    auto body = response.body->readAllText().wait(io.waitScope);
    auto type = response.headers->get(kj::HttpHeaderId::CONTENT_TYPE);
    return Reply{response.statusCode,
                 type == nullptr ? std::string() : std::string(KJ_ASSERT_NONNULL(type).cStr()),
                 std::string(body.cStr())};
  }

  kj::AsyncIoContext io = kj::setupAsyncIo();
  kj::HttpHeaderTable table;
  FakeSource source;
  kj::Own<kj::ConnectionReceiver> receiver;
  MetricsServer server;
  kj::Promise<void> serving;
};

TEST_F(MetricsServerTest, ServesTheExpositionWithItsContentType) {
  auto reply = get("/metrics");
  EXPECT_EQ(reply.status, 200u);
  EXPECT_EQ(reply.contentType, "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(reply.body, "up 1\n");
  EXPECT_EQ(get("/metrics?name=up").body, "up 1\n");
}

TEST_F(MetricsServerTest, HealthzAlwaysReadyzOnlyWhenReady) {
  EXPECT_EQ(get("/healthz").status, 200u);
  EXPECT_EQ(get("/readyz").status, 200u);
  source.ready = false;
  EXPECT_EQ(get("/healthz").status, 200u);
  auto reply = get("/readyz");
  EXPECT_EQ(reply.status, 503u);
  EXPECT_EQ(reply.body, "not ready: host is draining\n");
}

TEST_F(MetricsServerTest, UnknownPathsAndMethodsAreRefused) {
  EXPECT_EQ(get("/nothing").status, 404u);
  EXPECT_EQ(get("/metrics", kj::HttpMethod::POST).status, 405u);
}

}  // namespace
}  // namespace payhost::host
