// State that every instance of a plugin in one loaded copy of its library shares: one object
// for all of payhostd's shards, behind a mutex.
//
// payhostd makes one instance of a plugin per shard (one event loop per core), and a client's
// calls reach whichever shard accepted its connection. State kept in the instance is therefore
// per shard: a limit counted there is multiplied by the number of shards, and a record made on
// one shard is missing on the others. `SharedState<Key, T>` gives the instances one `T` instead:
//
//   struct Options { uint32_t limit; bool operator==(const Options&) const = default; };
//   struct Counts { uint64_t screened = 0; };
//   using Shared = payhost::SharedState<Options, Counts>;
//
//   // In the instance's constructor (any shard, any thread):
//   kj::Own<const Shared> shared = Shared::join(options, [] { return Counts(); });
//   // In a call: read the shard's clock outside, count inside, log outside.
//   uint64_t seen = shared->run(ctx.clock().now(), [&](Counts& counts, kj::Date now) {
//     return ++counts.screened;
//   });
//
// What "shared" means: every instance, on any shard, that joins with an equal `Key` (compared
// with `==`) while the state is alive gets the same object; the first `join` makes it with
// `make()`, and it is destroyed with the last reference, so a later `join` starts empty again.
// The registry of live states is per loaded copy of the plugin's library: a new version of the
// plugin (a hot swap loads it as a new copy beside the old one) starts with its own, empty state
// and never sees the old version's; hand state across versions with `Plugin::exportState`.
// In payhostd all instances of one version have the same config, so they all share one state; a
// different `Key` gets a state of its own (this matters only when one process holds several
// copies of the code, e.g. unit tests that compile the plugin's sources and run several
// `TestHost`s with different configs).
//
// One registry per loaded copy relies on how `payhost_add_plugin()` (the SDK's CMake package)
// builds a plugin: -fvisibility=hidden keeps the registry's symbols inside the library, so two
// loaded copies (two versions, or two plugins with the same Key and T types) never share one,
// and -fno-gnu-unique (GCC) keeps them from becoming STB_GNU_UNIQUE, which would both merge
// them across copies and keep the library from ever unloading (the package's post-link check
// fails the build if one appears). A plugin built some other way must do the same.
//
// Lifetime: the registry holds no memory and needs no destructor while no state is alive, so the
// library can be unloaded once its instances, and the servers that hold references, are gone.
// Keep the `kj::Own` in the instance (or in objects the instance's servers share) and nowhere
// that outlives them; never in a static.
//
// Threads: `join`, `run`, `with`, copies and drops of the reference are safe from any thread.
// `run` and `with` hold the state's mutex while the operation runs: every shard's call to this
// state waits for it. The operation must therefore be quick and self-contained: no waiting on a
// promise, no I/O, no call into another service or back into this state (the mutex is not
// recursive: that deadlocks), and nothing of a shard's own (its `Context`, log, clock or timer,
// which are not thread-safe) touched inside. Read the clock before, log after. Return values,
// never a reference or pointer into the state (`run` and `with` return by value, but a pointer
// would still escape the lock). If the operation throws, the lock is released and the exception
// propagates; what it changed before throwing stays changed.
//
// Time: `run` passes the operation the latest time any caller has passed to this state, so the
// state's time never runs backwards when shards' clocks read a little apart (or test hosts'
// manual clocks were advanced differently).

#ifndef PAYHOST_SHARED_STATE_H_
#define PAYHOST_SHARED_STATE_H_

#include <kj/debug.h>
#include <kj/memory.h>
#include <kj/mutex.h>
#include <kj/refcount.h>
#include <kj/time.h>

#include <cstddef>
#include <mutex>
#include <type_traits>
#include <utility>

namespace payhost {

// `Key` must be copyable and comparable with `==`; `T` needs no copy or move (it is made in
// place from what `make()` returns).
template <typename Key, typename T>
class SharedState final : public kj::AtomicRefcounted {
  struct Token {};

public:
  // The live state joined with a key equal to `key` in this copy of the library, or else a new
  // one holding `make()` (called at most once, under the registry's lock: keep it quick and do
  // not call `join` from it). Safe to call from several shards at once: they all get the same
  // state.
  template <typename Make>
  [[nodiscard]] static kj::Own<const SharedState> join(const Key& key, Make&& make) {
    std::lock_guard<std::mutex> lock(registryMutex);
    for (auto* entry = registryHead; entry != nullptr; entry = entry->next) {
      if (!(entry->key_ == key)) continue;
      // Null when its last reference was just dropped: its destructor is waiting for the lock
      // to unlink it, and the caller gets a new state.
      KJ_IF_MAYBE (joined, kj::atomicAddRefWeak(*entry)) {
        return kj::mv(*joined);
      }
    }
    auto created = kj::atomicRefcounted<SharedState>(Token{}, key, make);
    created->next = registryHead;
    registryHead = created.get();
    return kj::mv(created);
  }

  // How many states of this type are alive in this copy of the library: for tests.
  static size_t liveForTest() {
    std::lock_guard<std::mutex> lock(registryMutex);
    size_t count = 0;
    for (auto* entry = registryHead; entry != nullptr; entry = entry->next)
      ++count;
    return count;
  }

  // Runs `operation(T&, kj::Date)` under the mutex and returns what it returns. `now` is the
  // caller's clock reading; the operation gets the latest time any caller has passed (see
  // Time above). The rules of Threads above apply to `operation`.
  template <typename Operation>
  auto run(kj::Date now, Operation&& operation) const {
    auto locked = slot.lockExclusive();
    if (now > locked->latest) {
      locked->latest = now;
    } else {
      now = locked->latest;
    }
    return operation(locked->value, now);
  }

  // Runs `operation(T&)` under the mutex, for operations that need no time.
  template <typename Operation>
  auto with(Operation&& operation) const {
    auto locked = slot.lockExclusive();
    return operation(locked->value);
  }

  // The key it was joined with (immutable: no lock needed).
  const Key& key() const { return key_; }

  template <typename Make>
  SharedState(Token, const Key& key, Make& make) : key_(key), slot(make) {}

  ~SharedState() noexcept(false) override {
    // Unlinked under the lock `join` holds while it looks, so `join` never adds a reference to a
    // state being destroyed (kj::atomicAddRefWeak). The memory is freed after the lock is
    // released.
    std::lock_guard<std::mutex> lock(registryMutex);
    for (auto** link = &registryHead; *link != nullptr; link = &(*link)->next) {
      if (*link == this) {
        *link = next;
        return;
      }
    }
    KJ_LOG(ERROR, "a payhost::SharedState was missing from its library's registry");
  }
  KJ_DISALLOW_COPY(SharedState);

private:
  struct Slot {
    // `value(make())` initializes from the prvalue in place: T needs no move constructor.
    template <typename Make>
    explicit Slot(Make& make) : value(make()) {}
    T value;
    kj::Date latest = kj::UNIX_EPOCH;  // see `run`
  };

  const Key key_;
  kj::MutexGuarded<Slot> slot;
  // The next state in the registry; read and written only under `registryMutex`.
  SharedState* next = nullptr;

  // The registry of live states: a list threaded through them, so an empty registry holds no
  // memory. A plugin may keep no static object with a destructor (its library can be unloaded);
  // the mutex is constant-initialized and trivially destructible, and the list is empty whenever
  // no state is alive, which holds before the host closes the library. `inline` with the hidden
  // visibility of `payhost_add_plugin()` gives every loaded copy of a library its own.
  static_assert(std::is_trivially_destructible_v<std::mutex>);
  static inline std::mutex registryMutex;
  static inline SharedState* registryHead = nullptr;  // guarded by registryMutex
};

}  // namespace payhost

#endif  // PAYHOST_SHARED_STATE_H_
