// payhost-bench-grpc-server: the gRPC baseline of the benchmark suite, and the card service of the
// flow benchmark's gRPC microservices. The card processor's authorize (and purchase) call served
// by gRPC's callback API, with the same work per call as the plugin: the
// request is converted to the issuer's plain types, the same `Issuer` (plugins/card-processor,
// compiled in) decides, and the result is converted back.
//
//   payhost-bench-grpc-server --listen 127.0.0.1:0 [--listen unix:/path/sock ...]
//
// Prints "listening PORT" (the first address's port; 0 for a unix socket) once it serves.
//
// Runs until SIGTERM or SIGINT. The issuer is one object behind a mutex: gRPC runs callbacks on
// its own thread pool, and the plugin's issuer is shard-local.

#include "bench/grpc/authorize.grpc.pb.h"

#include <kj/debug.h>
#include <kj/time.h>

#include <grpcpp/grpcpp.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "plugins/card-processor/issuer.h"

namespace payhost::bench::grpcbaseline {
namespace {

namespace card = payhost::plugins::card;
namespace pb = payhost::bench::grpc;

pb::TransactionState toProto(card::TransactionState state) {
  // The proto enum mirrors the schema's, whose enumerants follow the issuer's order after
  // `unspecified`.
  return static_cast<pb::TransactionState>(static_cast<int>(state) + 1);
}

void fill(pb::PaymentResult& out, const card::Result& result) {
  KJ_SWITCH_ONEOF(result) {
    KJ_CASE_ONEOF(approval, card::Approval) {
      auto* approved = out.mutable_approved();
      approved->set_transaction_id(approval.transactionId.cStr(), approval.transactionId.size());
      approved->set_auth_code(approval.authCode.cStr(), approval.authCode.size());
      auto* amount = approved->mutable_amount();
      amount->set_minor_units(approval.amount.minorUnits);
      amount->set_currency(approval.amount.currency.cStr(), approval.amount.currency.size());
      approved->set_state(toProto(approval.state));
    }
    KJ_CASE_ONEOF(decline, card::Decline) {
      auto* declined = out.mutable_declined();
      declined->set_code(static_cast<int>(decline.code) + 1);
      declined->set_reason(decline.reason.cStr(), decline.reason.size());
      declined->set_advice(static_cast<int>(decline.advice) + 1);
      declined->set_transaction_id(decline.transactionId.cStr(), decline.transactionId.size());
    }
    KJ_CASE_ONEOF(rejection, card::Rejection) {
      auto* rejected = out.mutable_rejected();
      rejected->set_code(static_cast<int>(rejection.code) + 1);
      rejected->set_message(rejection.message.cStr(), rejection.message.size());
    }
    KJ_CASE_ONEOF(unknown, card::Unknown) {
      out.set_unknown(unknown.transactionId.cStr(), unknown.transactionId.size());
    }
  }
}

kj::StringPtr view(const std::string& text) {
  // Protobuf strings are not NUL-terminated views, but std::string keeps a terminator.
  return kj::StringPtr(text.c_str(), text.size());
}

class CardService final : public pb::CardProcessor::CallbackService {
public:
  // `issuer` outlives the service (KJ types may throw from destructors; gRPC's base may not).
  explicit CardService(card::Issuer& issuer) : issuer(issuer) {}

  ::grpc::ServerUnaryReactor* Authorize(::grpc::CallbackServerContext* context,
                                        const pb::AuthorizeRequest* request,
                                        pb::AuthorizeResponse* response) override {
    return decide(context, *request, *response, false);
  }

  ::grpc::ServerUnaryReactor* Purchase(::grpc::CallbackServerContext* context,
                                       const pb::AuthorizeRequest* request,
                                       pb::AuthorizeResponse* response) override {
    return decide(context, *request, *response, true);
  }

private:
  std::mutex mutex;
  card::Issuer& issuer;

  // `purchase`: authorize and capture at once (the payment flow's card step).
  ::grpc::ServerUnaryReactor* decide(::grpc::CallbackServerContext* context,
                                     const pb::AuthorizeRequest& request,
                                     pb::AuthorizeResponse& response, bool purchase) {
    auto metadata = kj::heapArray<card::MetadataEntry>(request.metadata_size());
    for (int i = 0; i < request.metadata_size(); ++i) {
      metadata[i] =
          card::MetadataEntry{view(request.metadata(i).key()), view(request.metadata(i).value())};
    }
    card::AuthorizeRequest plain{
        .merchantId = view(request.merchant_id()),
        .amount = request.amount().minor_units(),
        .currency = view(request.amount().currency()),
        .cardToken = view(request.card_token()),
        .idempotencyKey = view(request.idempotency_key()),
        .metadata = metadata,
    };
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto now = kj::systemPreciseCalendarClock().now();
      auto outcome = purchase ? issuer.purchase(plain, now) : issuer.authorize(plain, now);
      fill(*response.mutable_result(), outcome.result);
    }
    auto* reactor = context->DefaultReactor();
    reactor->Finish(::grpc::Status::OK);
    return reactor;
  }
};

volatile std::sig_atomic_t stopRequested = 0;

void onSignal(int) {
  stopRequested = 1;
}

int serve(const std::vector<std::string>& addresses) {
  card::Issuer issuer{card::Issuer::Options{}};
  CardService service(issuer);
  ::grpc::ServerBuilder builder;
  std::vector<int> ports(addresses.size(), 0);
  for (size_t i = 0; i < addresses.size(); ++i) {
    builder.AddListeningPort(addresses[i], ::grpc::InsecureServerCredentials(), &ports[i]);
  }
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  if (server == nullptr) {
    fprintf(stderr, "payhost-bench-grpc-server: cannot listen\n");
    return 1;
  }
  printf("listening %d\n", addresses[0].rfind("unix:", 0) == 0 ? 0 : ports[0]);
  fflush(stdout);
  std::signal(SIGTERM, onSignal);
  std::signal(SIGINT, onSignal);
  while (!stopRequested) {
    struct timespec tick = {0, 20L * 1000 * 1000};
    nanosleep(&tick, nullptr);
  }
  server->Shutdown();
  return 0;
}

}  // namespace
}  // namespace payhost::bench::grpcbaseline

int main(int argc, char** argv) {
  std::vector<std::string> addresses;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      addresses.push_back(argv[++i]);
    } else {
      fprintf(stderr, "usage: payhost-bench-grpc-server [--listen ADDRESS]\n");
      return 2;
    }
  }
  if (addresses.empty()) addresses.push_back("127.0.0.1:0");
  return payhost::bench::grpcbaseline::serve(addresses);
}
