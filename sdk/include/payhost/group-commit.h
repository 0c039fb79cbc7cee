// Group commit for plugins that write to a database: requests that arrive while one transaction
// is being committed are committed together in the next one, so many requests share one durable
// commit (one fsync on SQLite) while none is answered before its commit is durable.
//
//   struct Write { kj::String id; int64_t amount; };
//   struct Done { bool ok; };
//   // Runs on a worker thread inside one transaction; returns one result per item, in order.
//   kj::Array<Done> writeAll(payhost::SqlTransaction& tx, kj::ArrayPtr<Write> items);
//
//   payhost::GroupCommit<Write, Done> commits(ctx.sql("store"), &writeAll);
//   commits.submit(Write{kj::str(id), 100}).then([](Done done) { ... });
//
// The batch function must decide each item's result itself (a business refusal is a result, not
// a throw) so one item cannot spoil its neighbours. A transaction the database aborted for a
// conflict with a concurrent one (a deadlock between shards or hosts: isTransactionConflict)
// had no effect and runs again as it was, up to `MAX_CONFLICT_RETRIES` times. If it throws
// anything else (a database error, a unique violation raced by another host), the whole
// transaction rolls back and the items are retried one transaction each, in order, so only the
// item that fails again fails. The batch function may therefore run more than once for an item,
// each time in a fresh transaction; it must act only through `tx`.
//
// Shard-local: submit from the shard that made the object. The batch function runs on worker
// threads with items moved out of the shard: it must not touch shard objects, and it must be a
// plain function (it runs after the object may be gone). One transaction per object is in flight
// at a time; use one object per shard. Destroying the object cancels what is queued (those
// promises reject) and lets a transaction in flight finish on its worker.

#ifndef PAYHOST_GROUP_COMMIT_H_
#define PAYHOST_GROUP_COMMIT_H_

#include <payhost/sql.h>

#include <kj/array.h>
#include <kj/async.h>
#include <kj/debug.h>
#include <kj/mutex.h>
#include <kj/refcount.h>
#include <kj/vector.h>

#include <cstddef>

namespace payhost {

template <typename Item, typename Result>
class GroupCommit {
public:
  // Runs on a worker thread inside one transaction; returns one result per item, in order.
  using BatchFunction = kj::Array<Result> (*)(SqlTransaction&, kj::ArrayPtr<const Item>);

  // `database` outlives this object. At most `maxBatch` items go into one transaction.
  GroupCommit(Database& database, BatchFunction batch, size_t maxBatch = 512)
      : database(database), batch(batch), maxBatch(maxBatch), tasks(errors) {
    KJ_REQUIRE(maxBatch >= 1, "a group commit needs room for one item");
  }
  KJ_DISALLOW_COPY(GroupCommit);

  // Queues `item`; resolves with its result once the transaction that holds it is durable, or
  // rejects with what that transaction threw.
  kj::Promise<Result> submit(Item item) {
    auto paf = kj::newPromiseAndFulfiller<Result>();
    queue.add(Waiting{kj::mv(item), kj::mv(paf.fulfiller)});
    if (!inFlight) {
      // On the next turn, so requests that arrive in this one share the transaction.
      inFlight = true;
      tasks.add(kj::evalLater([this]() { return flush(); }));
    }
    return kj::mv(paf.promise);
  }

  // A transaction aborted for a conflict runs again at most this many times; then its items fail
  // with the conflict.
  static constexpr uint32_t MAX_CONFLICT_RETRIES = 4;

  // Items waiting for the next transaction, transactions committed so far, and transactions
  // the database aborted for a conflict and that ran again (for tests and metrics).
  size_t queued() const { return queue.size(); }
  uint64_t commits() const { return commitCount; }
  uint64_t conflicts() const { return conflictCount; }

private:
  struct Waiting {
    Item item;
    kj::Own<kj::PromiseFulfiller<Result>> fulfiller;
  };

  // What crosses to the worker thread: the items, and the results it writes back. The worker
  // holds a reference, so this stays valid if the shard side goes first; each side touches it
  // only while the other does not (the shard reads it after the transaction settled).
  struct Shared final : public kj::AtomicRefcounted {
    mutable kj::Array<Item> items;
    mutable kj::Array<Result> results;
  };

  struct Batch {
    kj::Own<Shared> shared;
    kj::Array<kj::Own<kj::PromiseFulfiller<Result>>> waiting;
  };

  class Errors final : public kj::TaskSet::ErrorHandler {
  public:
    void taskFailed(kj::Exception&& exception) override { KJ_LOG(ERROR, exception); }
  };

  Database& database;
  BatchFunction batch;
  size_t maxBatch;
  kj::Vector<Waiting> queue;
  bool inFlight = false;
  uint64_t commitCount = 0;
  uint64_t conflictCount = 0;
  Errors errors;
  kj::TaskSet tasks;

  // One transaction over `shared`'s items, run again while the database aborts it for a
  // conflict. The items are only read (const), so a failed run leaves them as they were.
  kj::Promise<void> run(Shared& shared, uint32_t retries = 0) {
    auto function = batch;
    return database
        .transactionWork([held = kj::atomicAddRef(shared), function](SqlTransaction& tx) mutable {
          auto results = function(tx, held->items.asPtr().asConst());
          if (results.size() != held->items.size()) {
            KJ_FAIL_ASSERT("a group-commit batch returned the wrong number of results",
                           results.size(), held->items.size());
          }
          held->results = kj::mv(results);
        })
        .then(
            [this]() -> kj::Promise<void> {
              ++commitCount;
              return kj::READY_NOW;
            },
            [this, &shared, retries](kj::Exception&& e) -> kj::Promise<void> {
              if (retries == MAX_CONFLICT_RETRIES || !isTransactionConflict(e)) return kj::mv(e);
              ++conflictCount;
              return run(shared, retries + 1);
            });
  }

  kj::Promise<void> flush() {
    size_t n = kj::min(queue.size(), maxBatch);
    auto batched = kj::heap<Batch>();
    batched->shared = kj::atomicRefcounted<Shared>();
    auto items = kj::heapArrayBuilder<Item>(n);
    auto fulfillers = kj::heapArrayBuilder<kj::Own<kj::PromiseFulfiller<Result>>>(n);
    for (size_t i = 0; i < n; ++i) {
      items.add(kj::mv(queue[i].item));
      fulfillers.add(kj::mv(queue[i].fulfiller));
    }
    kj::Vector<Waiting> rest(queue.size() - n);
    for (size_t i = n; i < queue.size(); ++i)
      rest.add(kj::mv(queue[i]));
    queue = kj::mv(rest);
    batched->shared->items = items.finish();
    batched->waiting = fulfillers.finish();

    auto& ref = *batched;
    return run(*ref.shared)
        .then(
            [&ref]() -> kj::Promise<void> {
              for (auto i : kj::indices(ref.waiting))
                ref.waiting[i]->fulfill(kj::mv(ref.shared->results[i]));
              return kj::READY_NOW;
            },
            [this, &ref](kj::Exception&& e) -> kj::Promise<void> {
              if (ref.waiting.size() == 1) {
                ref.waiting[0]->reject(kj::mv(e));
                return kj::READY_NOW;
              }
              return retryEach(ref, 0);
            })
        .attach(kj::mv(batched))
        .then([this]() { next(); },
              [this](kj::Exception&& e) {
                next();
                kj::throwFatalException(kj::mv(e));
              });
  }

  void next() {
    inFlight = false;
    if (!queue.empty()) {
      inFlight = true;
      tasks.add(flush());
    }
  }

  // After a failed transaction of several items: one transaction per item, in order.
  kj::Promise<void> retryEach(Batch& batched, size_t index) {
    if (index == batched.waiting.size()) return kj::READY_NOW;
    auto one = kj::atomicRefcounted<Shared>();
    auto items = kj::heapArrayBuilder<Item>(1);
    items.add(kj::mv(batched.shared->items[index]));
    one->items = items.finish();
    auto& oneRef = *one;
    return run(oneRef)
        .then([&batched, index,
               &oneRef]() { batched.waiting[index]->fulfill(kj::mv(oneRef.results[0])); },
              [&batched, index](kj::Exception&& e) { batched.waiting[index]->reject(kj::mv(e)); })
        .attach(kj::mv(one))
        .then([this, &batched, index]() { return retryEach(batched, index + 1); });
  }
};

}  // namespace payhost

#endif  // PAYHOST_GROUP_COMMIT_H_
