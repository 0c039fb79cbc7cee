#include "shared-issuer.h"

#include <kj/debug.h>

#include <errno.h>
#include <sys/random.h>

#include <mutex>
#include <type_traits>

namespace payhost::plugins::card {
namespace {

// The issuers alive in this copy of the library: a list threaded through them, so an empty list
// holds no memory. A plugin may keep no static object with a destructor (its library can be
// unloaded); the mutex is constant-initialized and needs none, and the list is empty whenever no
// instance exists, which the host guarantees before it closes the library.
static_assert(std::is_trivially_destructible_v<std::mutex>);
std::mutex listMutex;
SharedIssuer* listHead = nullptr;  // Guarded by listMutex.

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

kj::Own<const SharedIssuer> SharedIssuer::join(const Issuer::Options& options) {
  std::lock_guard<std::mutex> lock(listMutex);
  for (auto* entry = listHead; entry != nullptr; entry = entry->next) {
    if (entry->options_ != options) continue;
    // Null when its last reference was just dropped: its destructor is waiting for the lock to
    // unlink it, and the caller gets a new issuer.
    KJ_IF_MAYBE (joined, kj::atomicAddRefWeak(*entry)) {
      return kj::mv(*joined);
    }
  }
  auto created = kj::atomicRefcounted<SharedIssuer>(Token{}, options, randomEpoch());
  created->next = listHead;
  listHead = created.get();
  return kj::mv(created);
}

size_t SharedIssuer::liveForTest() {
  std::lock_guard<std::mutex> lock(listMutex);
  size_t count = 0;
  for (auto* entry = listHead; entry != nullptr; entry = entry->next)
    ++count;
  return count;
}

SharedIssuer::SharedIssuer(Token, const Issuer::Options& options, uint64_t idEpoch)
    : options_(options), idEpoch_(idEpoch), state(options, idEpoch) {}

SharedIssuer::~SharedIssuer() noexcept(false) {
  // Unlinked under the lock `join` holds while it looks, so `join` never adds a reference to an
  // issuer being destroyed (kj::atomicAddRefWeak). The issuer's memory is freed after the lock
  // is released, when the members are destroyed.
  std::lock_guard<std::mutex> lock(listMutex);
  for (auto** link = &listHead; *link != nullptr; link = &(*link)->next) {
    if (*link == this) {
      *link = next;
      return;
    }
  }
  KJ_LOG(ERROR, "a card-processor issuer was missing from its library's list");
}

}  // namespace payhost::plugins::card
