// An in-process test host for plugin unit tests: no daemon, no sockets, no dlopen.
//
//   #include <payhost/testing.h>
//   TEST(CardProcessor, DeclinesStolenCard) {
//     payhost::testing::TestHost host(*payhostPluginDescriptor(), "latency_ms = 0");
//     auto card = host.service<payhost::schema::CardProcessor>("payments.card");
//     auto request = card.authorizeRequest();
//     ...
//     auto response = request.send().wait(host.waitScope());
//   }
//
// Link the plugin's sources (not its .so) and `payhost::testing` into the test executable. The
// test host checks the descriptor as payhostd does, creates one instance (shard 0 of 1), runs an
// event loop on the calling thread, and gives the plugin a manual clock: timers fire only when
// the test calls `advanceTime`. Log records are kept for assertions.
//
// Thread-safety: use a TestHost from the thread that created it only. Each TestHost runs its own
// event loop, so a thread can have only one TestHost at a time.

#ifndef PAYHOST_TESTING_H_
#define PAYHOST_TESTING_H_

#include <payhost/abi.h>
#include <payhost/context.h>

#include <capnp/capability.h>
#include <kj/async.h>
#include <kj/memory.h>
#include <kj/string.h>
#include <kj/vector.h>

namespace payhost::testing {

struct LogRecord {
  LogLevel level;
  kj::String event;
  // The record as payhostd would render it: "event key=value ...".
  kj::String line;
};

class TestHost {
public:
  // Checks `plugin` (throws on an ABI or fingerprint mismatch) and creates one instance with
  // `configToml` as its config table. Throws what the plugin's constructor threw.
  explicit TestHost(const payhost_plugin_v1_descriptor& plugin, kj::StringPtr configToml = "");
  ~TestHost() noexcept(false);
  KJ_DISALLOW_COPY(TestHost);

  // A capability to one of the plugin's own services, or to one given to `provide`.
  capnp::Capability::Client serviceCapability(kj::StringPtr name);
  template <typename Interface>
  typename Interface::Client service(kj::StringPtr name) {
    return serviceCapability(name).castAs<Interface>();
  }

  // Makes `capability` the service `name` for the plugin's `Context::service` calls (a fake
  // server written in the test). May be called before or after the plugin looks it up.
  void provide(kj::StringPtr name, capnp::Capability::Client capability);

  // Makes `handle` the key `name` for the plugin's `Context::keys` (the handle must outlive the
  // test host). Without it, `keys()` throws.
  void provideKey(kj::StringPtr name, KeyHandle& handle);

  // Makes `database` the database `name` for the plugin's `Context::sql` (it must outlive the test
  // host). Without it, `sql()` throws.
  void provideDatabase(kj::StringPtr name, Database& database);

  // What `Context::caller()` returns for every call from now on (default "test").
  void setCaller(kj::StringPtr identity);
  // Gives the plugin a real SQLite database named `name` for `Context::sql`: a fresh file in a
  // temporary directory (under $TMPDIR), opened like payhostd's SQLite pool (WAL,
  // synchronous=FULL, foreign keys on, BEGIN IMMEDIATE transactions) with the same parameter
  // rules (`$1..$N`, each given) and typed rows. Transactions run at once on the test's thread,
  // like `offload`. The database (owned by the test host, returned for the test's own queries)
  // and its file are removed with the test host. Calling it again with the same name returns the
  // same database.
  Database& sqliteDatabase(kj::StringPtr name);

  // `Context::offload` runs the work at once on the test's thread (deterministic); this counts
  // the calls.
  uint64_t offloadCount() const;

  kj::WaitScope& waitScope();

  // Moves the plugin's clock forward and runs what became ready.
  void advanceTime(kj::Duration delay);

  kj::ArrayPtr<const LogRecord> logs() const;

  // Objects the plugin's code still has alive (see `payhost::serve`).
  uint64_t liveObjects() const;

  class Impl;

private:
  kj::Own<Impl> impl;
};

}  // namespace payhost::testing

#endif  // PAYHOST_TESTING_H_
