#include "shared-issuer.h"

#include <kj/debug.h>

#include <errno.h>
#include <sys/random.h>

namespace payhost::plugins::card {
namespace {

// 47 random bits under a set top bit: always twelve hexadecimal digits.
uint64_t randomEpoch() {
  uint64_t bits = 0;
  ssize_t got;
  do {
    got = getrandom(&bits, sizeof(bits), 0);
  } while (got < 0 && errno == EINTR);
  KJ_ASSERT(got == static_cast<ssize_t>(sizeof(bits)), "getrandom failed", errno);
  return (bits & ((uint64_t{1} << 47) - 1)) | (uint64_t{1} << 47);
}

}  // namespace

kj::Own<const SharedIssuer> joinIssuer(const Issuer::Options& options) {
  // Called only when no live issuer has these options: a new issuer draws a new epoch.
  return SharedIssuer::join(options, [&]() { return Issuer(options, randomEpoch()); });
}

}  // namespace payhost::plugins::card
