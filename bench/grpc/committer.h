// Durable writes for the flow benchmark's gRPC services (flow-services.cpp): a SQLite connection
// set up as the host's pool sets up its own (WAL, synchronous=FULL, BEGIN IMMEDIATE), and a
// committer thread that runs a plugin's batch function over it, one transaction per batch of at
// most `maxBatch` requests. With `maxBatch` 1 that is the straightforward service, one durable
// transaction per request; above 1 it group-commits like <payhost/group-commit.h>.
//
// The connection is the very one payhostd's pools use (sdk/src/sql-connection.h: the same
// settings, statements kept prepared, the same transaction), so the gRPC services do the same SQL
// work as the plugins in payhostd.
//
// Thread-safe: `submit` from any thread. Results are delivered on the committer's thread.

#pragma once

#include <payhost/sql.h>

#include <kj/array.h>
#include <kj/debug.h>
#include <kj/function.h>
#include <kj/mutex.h>
#include <kj/string.h>
#include <kj/thread.h>
#include <kj/vector.h>

#include <cstddef>

#include "sdk/src/sql-connection.h"

namespace payhost::bench {

template <typename Item, typename Result>
class Committer final {
public:
  using BatchFunction = kj::Array<Result> (*)(SqlTransaction&, kj::ArrayPtr<const Item>);
  // Called once per item on the committer's thread: its result, or null with the error of its
  // transaction.
  using Done = kj::Function<void(kj::Maybe<Result>&& result, kj::StringPtr error)>;

  // Opens `path` and runs `setup` (e.g. the plugin's createSchema) in a first transaction.
  Committer(kj::StringPtr path, BatchFunction batch, size_t maxBatch,
            kj::FunctionParam<void(SqlTransaction&)> setup)
      : connection("bench", path), batch(batch), maxBatch(maxBatch) {
    KJ_REQUIRE(maxBatch >= 1);
    _::runTransaction(connection, setup);
    thread = kj::heap<kj::Thread>([this]() { loop(); });
  }
  ~Committer() noexcept(false) {
    state.lockExclusive()->stopping = true;
    thread = nullptr;  // joins
  }
  KJ_DISALLOW_COPY(Committer);

  void submit(Item item, Done done) {
    state.lockExclusive()->queue.add(Waiting{kj::mv(item), kj::mv(done)});
  }

  // Transactions committed so far.
  size_t commits() const { return state.lockShared()->commits; }

private:
  struct Waiting {
    Item item;
    Done done;
  };
  struct State {
    kj::Vector<Waiting> queue;
    bool stopping = false;
    size_t commits = 0;
  };

  _::SqliteConnection connection;
  BatchFunction batch;
  size_t maxBatch;
  kj::MutexGuarded<State> state;
  kj::Own<kj::Thread> thread;

  void loop() {
    for (;;) {
      kj::Vector<Waiting> taken;
      bool stop = state.when([](const State& s) { return s.stopping || !s.queue.empty(); },
                             [&](State& s) {
                               if (s.stopping) return true;
                               size_t n = kj::min(s.queue.size(), maxBatch);
                               kj::Vector<Waiting> rest(s.queue.size() - n);
                               for (size_t i = 0; i < s.queue.size(); ++i) {
                                 (i < n ? taken : rest).add(kj::mv(s.queue[i]));
                               }
                               s.queue = kj::mv(rest);
                               return false;
                             });
      if (stop) return;
      if (!commit(taken.asPtr()) && taken.size() > 1) {
        // As <payhost/group-commit.h>: after a failed batch, one transaction per item.
        for (auto& one : taken)
          commit(kj::arrayPtr(&one, 1));
      }
    }
  }

  // One transaction for `waiting`; false (nothing delivered) when it failed and can be retried
  // item by item.
  bool commit(kj::ArrayPtr<Waiting> waiting) {
    auto items = kj::heapArrayBuilder<Item>(waiting.size());
    for (auto& w : waiting)
      items.add(kj::mv(w.item));
    auto owned = items.finish();
    kj::Array<Result> results;
    auto failure = kj::runCatchingExceptions([&]() {
      _::runTransaction(connection, [&](SqlTransaction& tx) {
        results = batch(tx, owned.asPtr().asConst());
        if (results.size() != owned.size()) {
          kj::throwFatalException(
              KJ_EXCEPTION(FAILED, "a batch returned the wrong number of results"));
        }
      });
    });
    KJ_IF_MAYBE (e, failure) {
      if (waiting.size() > 1) {
        for (auto i : kj::indices(waiting))
          waiting[i].item = kj::mv(owned[i]);
        return false;
      }
      waiting[0].done(nullptr, e->getDescription());
      return true;
    }
    ++state.lockExclusive()->commits;
    for (auto i : kj::indices(waiting))
      waiting[i].done(kj::mv(results[i]), nullptr);
    return true;
  }
};

}  // namespace payhost::bench
