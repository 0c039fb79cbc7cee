#include "bench/grpc/grpc-client.h"

#include "bench/grpc/authorize.grpc.pb.h"

#include <kj/debug.h>

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <thread>

namespace payhost::bench {

GrpcClosedLoop::GrpcClosedLoop(size_t slots, Start start) : start(kj::mv(start)), started(slots) {
  KJ_REQUIRE(slots > 0);
}

void GrpcClosedLoop::next(size_t slot) {
  auto now = Clock::now();
  if (now >= windowEnd) {
    std::lock_guard<std::mutex> lock(mutex);
    if (--active == 0) done.notify_all();
    return;
  }
  started[slot] = now;
  start(slot, sequence.fetch_add(1, std::memory_order_relaxed) + 1);
}

void GrpcClosedLoop::finish(size_t slot, bool ok, kj::StringPtr error) {
  auto end = Clock::now();
  if (started[slot] >= windowStart) {
    std::lock_guard<std::mutex> lock(mutex);
    if (ok) {
      ++result.completed;
      result.latency.record(
          std::chrono::duration_cast<std::chrono::nanoseconds>(end - started[slot]).count());
    } else {
      ++result.failed;
      if (result.firstError == nullptr) result.firstError = kj::str(error);
    }
  }
  next(slot);
}

LoadResult GrpcClosedLoop::run(std::chrono::nanoseconds warmUp, std::chrono::nanoseconds duration,
                               const std::function<void()>& onWindowStart) {
  auto now = Clock::now();
  windowStart = now + warmUp;
  windowEnd = windowStart + duration;
  active = started.size();
  for (size_t slot = 0; slot < started.size(); ++slot)
    next(slot);
  std::this_thread::sleep_until(windowStart);
  onWindowStart();
  std::unique_lock<std::mutex> lock(mutex);
  done.wait(lock, [&]() { return active == 0; });
  auto elapsed = std::chrono::duration<double>(Clock::now() - windowStart).count();
  result.elapsedSeconds = elapsed;
  result.callsPerSecond = elapsed > 0 ? static_cast<double>(result.completed) / elapsed : 0;
  return kj::mv(result);
}

namespace {

namespace pb = payhost::bench::grpc;

// One slot's call: its context and messages, reused call after call.
struct Slot {
  pb::CardProcessor::Stub* stub = nullptr;
  std::optional<::grpc::ClientContext> context;
  pb::AuthorizeRequest request;
  pb::AuthorizeResponse response;
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
  std::vector<Slot> slots(static_cast<size_t>(connections) * inFlight);
  for (size_t i = 0; i < slots.size(); ++i)
    slots[i].stub = stubs[i % connections].get();
  GrpcClosedLoop loop(slots.size(), [&](size_t index, uint64_t n) {
    auto& slot = slots[index];
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
    slot.stub->async()->Authorize(
        &*slot.context, &slot.request, &slot.response,
        [&loop, &slot, index](const ::grpc::Status& status) {
          if (status.ok() && slot.response.result().has_approved()) {
            loop.finish(index, true, nullptr);
          } else {
            loop.finish(index, false,
                        kj::str("gRPC call failed: ", status.error_message().c_str()));
          }
        });
  });
  return loop.run(warmUp, duration, onWindowStart);
}

}  // namespace payhost::bench
