// One simulated issuer shared by every instance (one per shard) of the card-processor plugin in a
// loaded copy of its library, as a real card network is one service for all of a host's shards:
// an authorization made through one shard can be captured, voided, refunded or synced through
// any other.
//
// The first instance to `join` creates the issuer; instances with equal `Issuer::Options` join
// it; it is destroyed with the last reference (instances and the servers they handed out), so a
// new plugin version, which is a new copy of the library, starts with an empty issuer, and so
// does a later instance once all earlier ones are gone. Instances with other options get an
// issuer of their own (in payhostd all instances of one version have the same config; this
// matters only when one process holds several copies, e.g. tests linking the plugin's sources).
//
// Only the issuer is shared: each instance keeps its own Context, clock, timer and log, and
// calls `run` with its own clock's time.
//
// Thread-safe.

#ifndef PAYHOST_PLUGINS_CARD_PROCESSOR_SHARED_ISSUER_H_
#define PAYHOST_PLUGINS_CARD_PROCESSOR_SHARED_ISSUER_H_

#include <kj/memory.h>
#include <kj/mutex.h>
#include <kj/refcount.h>
#include <kj/time.h>

#include <cstddef>
#include <cstdint>

#include "issuer.h"

namespace payhost::plugins::card {

class SharedIssuer final : public kj::AtomicRefcounted {
  struct Token {};

public:
  // The live issuer with these options in this copy of the library, or else a new, empty one
  // whose transaction ids carry a fresh random epoch (getrandom). Safe to call from several
  // shards at once: they all get the same issuer.
  [[nodiscard]] static kj::Own<const SharedIssuer> join(const Issuer::Options& options);

  // How many issuers are alive in this copy of the library, for tests.
  static size_t liveForTest();

  SharedIssuer(Token, const Issuer::Options& options, uint64_t idEpoch);
  ~SharedIssuer() noexcept(false) override;
  KJ_DISALLOW_COPY(SharedIssuer);

  // Runs `operation(Issuer&, kj::Date)` under the issuer's lock and returns what it returns.
  // `now` is the caller's clock reading; the issuer is given the latest time any caller has
  // passed when that is later, so its time never runs backwards between shards whose clocks
  // read a little apart, or between test hosts whose clocks were advanced differently.
  // `operation` must be quick: no waiting, no calls out of the issuer, nothing of a shard's
  // (its Context, clock or log) touched inside.
  // TODO(perf): validation and the canonical parameters of a request could be computed before
  // the lock; at two shards the suite's authorize costs about 3% more than with an issuer per
  // shard (within its noise on a shared machine).
  template <typename Operation>
  auto run(kj::Date now, Operation&& operation) const {
    auto locked = state.lockExclusive();
    if (now > locked->latest) {
      locked->latest = now;
    } else {
      now = locked->latest;
    }
    return operation(locked->issuer, now);
  }

  const Issuer::Options& options() const { return options_; }
  uint64_t idEpoch() const { return idEpoch_; }

private:
  struct State {
    State(const Issuer::Options& options, uint64_t idEpoch) : issuer(options, idEpoch) {}
    Issuer issuer;
    // The latest time any caller has passed (see `run`).
    kj::Date latest = kj::UNIX_EPOCH;
  };

  const Issuer::Options options_;
  const uint64_t idEpoch_;
  kj::MutexGuarded<State> state;

  // The next issuer in this library's list of live ones (shared-issuer.cpp); read and written
  // only under that list's mutex.
  SharedIssuer* next = nullptr;
};

}  // namespace payhost::plugins::card

#endif  // PAYHOST_PLUGINS_CARD_PROCESSOR_SHARED_ISSUER_H_
