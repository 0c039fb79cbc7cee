// BufferedStream over real socket pairs (kj's two-way pipe is a socketpair): partial reads at any
// size, order and no loss under back-pressure, shutdown with unsent data, end of stream, a peer
// that disconnects mid-message, and Cap'n Proto RPC through it.

#include "host/rpc/buffered-stream.h"

#include <payhost/host.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <gtest/gtest.h>

#include <vector>

namespace payhost::host {
namespace {

kj::Array<kj::byte> pattern(size_t size, uint32_t seed) {
  auto bytes = kj::heapArray<kj::byte>(size);
  uint32_t x = seed;
  for (auto& b : bytes) {
    x = x * 1103515245 + 12345;
    b = static_cast<kj::byte>(x >> 16);
  }
  return bytes;
}

struct Pair {
  explicit Pair(kj::AsyncIoContext& io) {
    auto pipe = io.provider->newTwoWayPipe();
    buffered = bufferStream(kj::mv(pipe.ends[0]));
    peer = kj::mv(pipe.ends[1]);
  }
  kj::Own<kj::AsyncIoStream> buffered;
  kj::Own<kj::AsyncIoStream> peer;
};

TEST(BufferedStream, ReadsAtEverySizeSeeEveryByteInOrder) {
  auto io = kj::setupAsyncIo();
  Pair pair(io);
  auto data = pattern(300'000, 1);
  auto writing = pair.peer->write(data.begin(), data.size())
                     .then([&]() { pair.peer->shutdownWrite(); })
                     .eagerlyEvaluate(nullptr);
  std::vector<kj::byte> got;
  size_t sizes[] = {1, 7, 8, 4096, 65535, 65536, 100'000, 3};
  size_t i = 0;
  for (;;) {
    size_t size = sizes[i++ % (sizeof(sizes) / sizeof(sizes[0]))];
    auto buffer = kj::heapArray<kj::byte>(size);
    size_t n = pair.buffered->tryRead(buffer.begin(), size, size).wait(io.waitScope);
    got.insert(got.end(), buffer.begin(), buffer.begin() + n);
    if (n < size) break;  // End of stream: fewer than minBytes.
  }
  writing.wait(io.waitScope);
  ASSERT_EQ(got.size(), data.size());
  EXPECT_TRUE(memcmp(got.data(), data.begin(), data.size()) == 0);
}

TEST(BufferedStream, SmallReadsTakeFewSystemCallsAndMinBytesIsHonoured) {
  auto io = kj::setupAsyncIo();
  Pair pair(io);
  auto data = pattern(64, 2);
  pair.peer->write(data.begin(), data.size()).wait(io.waitScope);
  kj::byte buffer[64];
  // Asks for at least 10 of up to 64 bytes: gets what arrived, at least 10.
  size_t n = pair.buffered->tryRead(buffer, 10, 64).wait(io.waitScope);
  EXPECT_GE(n, 10u);
  EXPECT_EQ(memcmp(buffer, data.begin(), n), 0);
}

TEST(BufferedStream, WritesArriveInOrderUnderBackPressure) {
  auto io = kj::setupAsyncIo();
  Pair pair(io);
  // Far more than the socket buffer and MAX_PENDING_BYTES, in pieces of odd sizes, with nobody
  // reading at first: some writes must wait, none may be lost or reordered.
  auto data = pattern(12 * 1024 * 1024, 3);
  size_t offset = 0;
  kj::Vector<kj::Promise<void>> writes;
  size_t piece = 1;
  bool blocked = false;
  while (offset < data.size()) {
    size_t size = kj::min(piece, data.size() - offset);
    kj::ArrayPtr<const kj::byte> parts[] = {data.slice(offset, offset + size)};
    auto promise = pair.buffered->write(parts);
    if (!promise.poll(io.waitScope)) blocked = true;
    writes.add(kj::mv(promise));
    offset += size;
    piece = piece * 3 % 70'001 + 1;
  }
  EXPECT_TRUE(blocked) << "12 MiB unread never pushed back";
  auto all = kj::joinPromises(writes.releaseAsArray())
                 .then([&]() { pair.buffered->shutdownWrite(); })
                 .eagerlyEvaluate(nullptr);
  auto got = pair.peer->readAllBytes().wait(io.waitScope);
  all.wait(io.waitScope);
  ASSERT_EQ(got.size(), data.size());
  EXPECT_TRUE(memcmp(got.begin(), data.begin(), data.size()) == 0);
}

TEST(BufferedStream, ShutdownSendsWhatIsPendingFirst) {
  auto io = kj::setupAsyncIo();
  Pair pair(io);
  auto data = pattern(1000, 4);
  pair.buffered->write(data.begin(), data.size()).wait(io.waitScope);
  pair.buffered->shutdownWrite();
  auto got = pair.peer->readAllBytes().wait(io.waitScope);
  ASSERT_EQ(got.size(), data.size());
  EXPECT_EQ(memcmp(got.begin(), data.begin(), data.size()), 0);
}

TEST(BufferedStream, PeerHangingUpMidMessageEndsTheRead) {
  auto io = kj::setupAsyncIo();
  Pair pair(io);
  auto data = pattern(100, 5);
  pair.peer->write(data.begin(), data.size()).wait(io.waitScope);
  pair.peer = nullptr;  // Closes the socket with half a 200-byte message sent.
  kj::byte buffer[200];
  size_t n = pair.buffered->tryRead(buffer, 200, 200).wait(io.waitScope);
  EXPECT_EQ(n, 100u);
  EXPECT_EQ(memcmp(buffer, data.begin(), n), 0);
  EXPECT_EQ(pair.buffered->tryRead(buffer, 1, 200).wait(io.waitScope), 0u);
}

TEST(BufferedStream, WriteToAClosedPeerFailsALaterWrite) {
  auto io = kj::setupAsyncIo();
  Pair pair(io);
  pair.peer = nullptr;
  auto data = pattern(1000, 6);
  bool failed = false;
  for (int i = 0; i < 100 && !failed; ++i) {
    pair.buffered->write(data.begin(), data.size())
        .then([]() {}, [&](kj::Exception&&) { failed = true; })
        .wait(io.waitScope);
    io.provider->getTimer().afterDelay(1 * kj::MILLISECONDS).wait(io.waitScope);
  }
  EXPECT_TRUE(failed);
}

// Answers getService with a capability that is this server again, and names it in the error of
// listServices; enough to carry requests and returns both ways.
class EchoGateway final : public schema::Gateway::Server {
public:
  kj::Promise<void> getService(GetServiceContext context) override {
    KJ_REQUIRE(context.getParams().getName().startsWith("svc-"), "bad name");
    context.getResults().setService(kj::heap<EchoGateway>());
    return kj::READY_NOW;
  }
};

TEST(BufferedStream, CarriesCapnpRpcBothWays) {
  auto io = kj::setupAsyncIo();
  auto pipe = io.provider->newTwoWayPipe();
  auto serverStream = bufferStream(kj::mv(pipe.ends[0]));
  auto clientStream = bufferStream(kj::mv(pipe.ends[1]));
  capnp::TwoPartyVatNetwork serverNetwork(*serverStream, capnp::rpc::twoparty::Side::SERVER);
  auto server = capnp::makeRpcServer(serverNetwork, kj::heap<EchoGateway>());
  capnp::TwoPartyClient client(*clientStream);
  auto gateway = client.bootstrap().castAs<schema::Gateway>();
  // 500 calls in flight at once, each a request and a return carrying a capability.
  kj::Vector<kj::Promise<void>> calls;
  int answered = 0;
  for (int i = 0; i < 500; ++i) {
    auto request = gateway.getServiceRequest();
    request.setName(kj::str("svc-", i));
    calls.add(request.send().then([&](auto&&) { ++answered; }));
  }
  kj::joinPromises(calls.releaseAsArray()).wait(io.waitScope);
  EXPECT_EQ(answered, 500);
}

}  // namespace
}  // namespace payhost::host
