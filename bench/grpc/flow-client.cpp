#include "bench/grpc/flow-client.h"

#include "bench/grpc/flow.grpc.pb.h"
#include "bench/grpc/grpc-client.h"

#include <kj/debug.h>

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <optional>
#include <vector>

namespace payhost::bench {

namespace pb = payhost::bench::grpc;

struct GrpcFlowClient::Stubs {
  std::unique_ptr<pb::Payments::Stub> payments;
  std::unique_ptr<pb::Fx::Stub> fx;
  std::unique_ptr<pb::Ledger::Stub> ledger;
};

namespace {

std::shared_ptr<::grpc::Channel> connect(const std::string& address) {
  auto channel = ::grpc::CreateChannel(address, ::grpc::InsecureChannelCredentials());
  KJ_REQUIRE(channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5)),
             "cannot connect to the gRPC service", address.c_str());
  return channel;
}

void check(const ::grpc::Status& status, const char* what) {
  KJ_REQUIRE(status.ok(), "gRPC call failed", what, status.error_message().c_str());
}

// One slot's purchase: its context and messages, reused purchase after purchase.
struct Slot {
  std::optional<::grpc::ClientContext> context;
  pb::PaymentRequest request;
  pb::AuthorizeResponse response;
};

}  // namespace

GrpcFlowClient::GrpcFlowClient(const std::string& payments, const std::string& fx,
                               const std::string& ledger)
    : stubs(kj::heap<Stubs>()) {
  stubs->payments = pb::Payments::NewStub(connect(payments));
  stubs->fx = pb::Fx::NewStub(connect(fx));
  stubs->ledger = pb::Ledger::NewStub(connect(ledger));
}

GrpcFlowClient::~GrpcFlowClient() noexcept(false) = default;

LoadResult GrpcFlowClient::purchase(const GrpcPurchase& what, const std::string& keyPrefix,
                                    uint32_t inFlight, std::chrono::nanoseconds warmUp,
                                    std::chrono::nanoseconds duration) {
  KJ_REQUIRE(inFlight > 0);
  std::vector<Slot> slots(inFlight);
  std::atomic<uint64_t> captured{0};
  auto* stub = stubs->payments.get();
  GrpcClosedLoop loop(slots.size(), [&](size_t index, uint64_t n) {
    auto& slot = slots[index];
    auto& request = slot.request;
    request.set_merchant_id(what.merchant);
    request.mutable_amount()->set_minor_units(what.amount);
    request.mutable_amount()->set_currency(what.currency);
    request.set_settlement_currency(what.settlement);
    request.set_card_token(what.cardToken);
    request.set_idempotency_key(keyPrefix + std::to_string(n));
    slot.response.Clear();
    slot.context.emplace();
    stub->async()->Purchase(
        &*slot.context, &slot.request, &slot.response,
        [&loop, &slot, &captured, index](const ::grpc::Status& status) {
          auto& result = slot.response.result();
          if (status.ok() && result.has_approved() && result.approved().state() == pb::CAPTURED) {
            captured.fetch_add(1, std::memory_order_relaxed);
            loop.finish(index, true, nullptr);
          } else if (!status.ok()) {
            loop.finish(index, false,
                        kj::str("gRPC call failed: ", status.error_message().c_str()));
          } else {
            loop.finish(index, false,
                        kj::str("purchase not captured: ", result.DebugString().c_str()));
          }
        });
  });
  auto result = loop.run(warmUp, duration, []() {});
  acknowledged_ += captured.load();
  return result;
}

int64_t GrpcFlowClient::quote(int64_t amount, const std::string& from, const std::string& to) {
  pb::QuoteRequest request;
  request.mutable_source()->set_minor_units(amount);
  request.mutable_source()->set_currency(from);
  request.set_target_currency(to);
  pb::FxResponse response;
  ::grpc::ClientContext context;
  check(stubs->fx->Quote(&context, request, &response), "fx quote");
  KJ_REQUIRE(response.has_quote(), "fx refused a quote", response.rejected().message().c_str());
  return response.quote().target().minor_units();
}

int64_t GrpcFlowClient::net(const std::string& account, const std::string& currency) {
  pb::BalanceRequest request;
  request.set_account_id(account);
  request.set_currency(currency);
  pb::Balance response;
  ::grpc::ClientContext context;
  check(stubs->ledger->GetBalance(&context, request, &response), "ledger balance");
  return response.credits().minor_units() - response.debits().minor_units();
}

}  // namespace payhost::bench
