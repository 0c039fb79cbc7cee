// payhost-flow-bench's client for the payment flow as gRPC microservices (flow-services.cpp):
// purchases through the payments service in a closed loop, an FX quote and a ledger balance for
// the benchmark's checks. One channel per service, kept for the client's lifetime so that
// connection setup is not in any round.
//
// Blocking; one thread at a time.

#pragma once

#include "bench/loadgen.h"

#include <kj/memory.h>
#include <kj/string.h>

#include <chrono>
#include <cstdint>
#include <string>

namespace payhost::bench {

struct GrpcPurchase {
  std::string merchant;
  int64_t amount = 0;  // minor units of `currency`
  std::string currency;
  std::string settlement;
  std::string cardToken;
};

class GrpcFlowClient final {
public:
  // gRPC addresses ("127.0.0.1:PORT") of the payments, fx and ledger services.
  GrpcFlowClient(const std::string& payments, const std::string& fx, const std::string& ledger);
  ~GrpcFlowClient() noexcept(false);
  KJ_DISALLOW_COPY(GrpcFlowClient);

  // `inFlight` purchases kept in flight on one channel, each with a new idempotency key starting
  // with `keyPrefix`. A purchase succeeds when it is answered approved and captured.
  LoadResult purchase(const GrpcPurchase& what, const std::string& keyPrefix, uint32_t inFlight,
                      std::chrono::nanoseconds warmUp, std::chrono::nanoseconds duration);

  // Purchases answered approved and captured so far, warm-ups included.
  uint64_t acknowledged() const { return acknowledged_; }

  // What fx quotes for `amount` minor units of `from` in `to`.
  int64_t quote(int64_t amount, const std::string& from, const std::string& to);

  // Posted credits minus posted debits of the ledger account.
  int64_t net(const std::string& account, const std::string& currency);

private:
  struct Stubs;
  kj::Own<Stubs> stubs;
  uint64_t acknowledged_ = 0;
};

}  // namespace payhost::bench
