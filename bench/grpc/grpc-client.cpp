#include "bench/grpc/grpc-client.h"

#include "bench/grpc/authorize.grpc.pb.h"

#include <kj/debug.h>

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace payhost::bench {
namespace {

namespace pb = payhost::bench::grpc;
using Clock = std::chrono::steady_clock;

class Loop;

// One slot of the closed loop: its call's context and messages, reused call after call.
struct Slot {
  Loop* loop = nullptr;
  pb::CardProcessor::Stub* stub = nullptr;
  std::optional<::grpc::ClientContext> context;
  pb::AuthorizeRequest request;
  pb::AuthorizeResponse response;
  Clock::time_point started;
};

class Loop {
public:
  Loop(Clock::time_point windowStart, Clock::time_point windowEnd)
      : windowStart(windowStart), windowEnd(windowEnd) {}

  void start(Slot& slot) {
    auto now = Clock::now();
    if (now >= windowEnd) {
      std::lock_guard<std::mutex> lock(mutex);
      if (--active == 0) done.notify_all();
      return;
    }
    uint64_t n = sequence.fetch_add(1, std::memory_order_relaxed) + 1;
    auto& request = slot.request;
    request.Clear();
    request.set_merchant_id("merchant-000042");
    auto* amount = request.mutable_amount();
    amount->set_minor_units(1250 + static_cast<int64_t>(n % 1000) * 100);
    amount->set_currency("EUR");
    request.set_card_token("tok_visa_approve");
    request.set_idempotency_key("bench-grpc-" + std::to_string(n));
    auto* channel = request.add_metadata();
    channel->set_key("channel");
    channel->set_value("web");
    auto* order = request.add_metadata();
    order->set_key("order");
    order->set_value("A-1001");
    slot.response.Clear();
    slot.context.emplace();
    slot.started = now;
    slot.stub->async()->Authorize(
        &*slot.context, &slot.request, &slot.response,
        [this, &slot](const ::grpc::Status& status) { finish(slot, status); });
  }

  void finish(Slot& slot, const ::grpc::Status& status) {
    auto end = Clock::now();
    if (slot.started >= windowStart) {
      std::lock_guard<std::mutex> lock(mutex);
      if (status.ok() && slot.response.result().has_approved()) {
        ++result.completed;
        result.latency.record(
            std::chrono::duration_cast<std::chrono::nanoseconds>(end - slot.started).count());
      } else {
        ++result.failed;
        if (result.firstError == nullptr) {
          result.firstError = kj::str("gRPC call failed: ", status.error_message().c_str());
        }
      }
    }
    start(slot);
  }

  LoadResult wait(uint32_t slots) {
    std::unique_lock<std::mutex> lock(mutex);
    done.wait(lock, [&]() { return active == 0; });
    auto elapsed = std::chrono::duration<double>(Clock::now() - windowStart).count();
    result.elapsedSeconds = elapsed;
    result.callsPerSecond = elapsed > 0 ? static_cast<double>(result.completed) / elapsed : 0;
    return kj::mv(result);
  }

  void setActive(uint32_t n) { active = n; }

private:
  const Clock::time_point windowStart;
  const Clock::time_point windowEnd;
  std::atomic<uint64_t> sequence{0};
  std::mutex mutex;
  std::condition_variable done;
  uint32_t active = 0;
  LoadResult result;
};

}  // namespace

LoadResult runGrpcClosedLoop(const std::string& address, uint32_t connections, uint32_t inFlight,
                             std::chrono::nanoseconds warmUp, std::chrono::nanoseconds duration,
                             const std::function<void()>& onWindowStart) {
  KJ_REQUIRE(connections > 0 && inFlight > 0);
  std::vector<std::unique_ptr<pb::CardProcessor::Stub>> stubs;
  for (uint32_t i = 0; i < connections; ++i) {
    // A channel argument of its own keeps gRPC from sharing one connection between channels.
    ::grpc::ChannelArguments arguments;
    arguments.SetInt("payhost.bench.channel", static_cast<int>(i));
    arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel =
        ::grpc::CreateCustomChannel(address, ::grpc::InsecureChannelCredentials(), arguments);
    KJ_REQUIRE(
        channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5)),
        "cannot connect to the gRPC server", address.c_str());
    stubs.push_back(pb::CardProcessor::NewStub(channel));
  }
  auto now = Clock::now();
  Loop loop(now + warmUp, now + warmUp + duration);
  std::vector<Slot> slots(static_cast<size_t>(connections) * inFlight);
  loop.setActive(static_cast<uint32_t>(slots.size()));
  for (size_t i = 0; i < slots.size(); ++i) {
    slots[i].loop = &loop;
    slots[i].stub = stubs[i % connections].get();
    loop.start(slots[i]);
  }
  std::this_thread::sleep_until(now + warmUp);
  onWindowStart();
  return loop.wait(static_cast<uint32_t>(slots.size()));
}

}  // namespace payhost::bench
