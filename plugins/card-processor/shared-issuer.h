// One simulated issuer shared by every instance (one per shard) of the card-processor plugin in a
// loaded copy of its library, as a real card network is one service for all of a host's shards:
// an authorization made through one shard can be captured, voided, refunded or synced through
// any other.
//
// The sharing is the SDK's `payhost::SharedState` (<payhost/shared-state.h>): the first instance
// to `joinIssuer` creates the issuer; instances with equal `Issuer::Options` join it; it is
// destroyed with the last reference (instances and the servers they handed out), so a new plugin
// version, which is a new copy of the library, starts with an empty issuer, and so does a later
// instance once all earlier ones are gone. Instances with other options get an issuer of their
// own (in payhostd all instances of one version have the same config; this matters only when one
// process holds several copies, e.g. tests linking the plugin's sources).
//
// Only the issuer is shared: each instance keeps its own Context, clock, timer and log, and
// calls `run` with its own clock's time; the issuer's time never runs backwards between shards.
// The operation given to `run` must be quick: no waiting, no calls out of the issuer, nothing of
// a shard's (its Context, clock or log) touched inside.
// TODO(perf): validation and the canonical parameters of a request could be computed before the
// lock; at two shards the suite's authorize costs about 3% more than with an issuer per shard
// (within its noise on a shared machine).
//
// Thread-safe.

#ifndef PAYHOST_PLUGINS_CARD_PROCESSOR_SHARED_ISSUER_H_
#define PAYHOST_PLUGINS_CARD_PROCESSOR_SHARED_ISSUER_H_

#include <payhost/shared-state.h>

#include <kj/memory.h>

#include "issuer.h"

namespace payhost::plugins::card {

// `run(now, [](Issuer&, kj::Date) {...})`, `key()` (the options), `liveForTest()`.
using SharedIssuer = SharedState<Issuer::Options, Issuer>;

// The live issuer with these options in this copy of the library, or else a new, empty one
// whose transaction ids carry a fresh random epoch (getrandom). Safe to call from several shards
// at once: they all get the same issuer.
[[nodiscard]] kj::Own<const SharedIssuer> joinIssuer(const Issuer::Options& options);

}  // namespace payhost::plugins::card

#endif  // PAYHOST_PLUGINS_CARD_PROCESSOR_SHARED_ISSUER_H_
