// Helpers for end-to-end tests of payhostd and payhostctl: the real binaries run as child
// processes with a config in a fresh temporary directory and the real fixture plugins; clients
// are Cap'n Proto clients in the test process, over real TCP (port 0) and unix sockets.
//
// Nothing here waits by sleeping. The daemon's log is read from a pipe with poll() and a
// deadline, its exit is awaited on a pidfd with a deadline, and figures it reports are polled
// over its Admin interface until they match or a deadline passes.
//
// Every DaemonProcess is stopped with SIGTERM when destroyed unless the test stopped it, must
// exit 0, and must not have printed a sanitizer report; otherwise the running test fails.
//
// Single-threaded: everything here belongs to the test's thread.

#pragma once

#include <payhost/host.capnp.h>
#include <payhost/payments.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/io.h>
#include <kj/time.h>

#include <gtest/gtest.h>

#include <poll.h>
#include <sys/types.h>

#include <initializer_list>
#include <string>

namespace payhost::test {

using ScreenResponse = capnp::Response<schema::FraudScreen::ScreenResults>;

// Generous: a sanitized payhostd on a busy 2-core machine starts slowly. Passing tests never
// wait this long.
constexpr kj::Duration START_TIMEOUT = 30 * kj::SECONDS;
constexpr kj::Duration STEP_TIMEOUT = 10 * kj::SECONDS;

std::string s(kj::StringPtr text);
bool contains(kj::StringPtr text, kj::StringPtr needle);
// The path of a fixture plugin file in the build tree.
kj::String fixture(kj::StringPtr file);
kj::TimePoint now();
// Milliseconds left until `deadline`, for poll(); 0 once it has passed.
int msUntil(kj::TimePoint deadline);
void writeFile(kj::StringPtr path, kj::StringPtr text);
// A number from the environment (a seed, a round count), or `fallback` when it is unset.
uint64_t envNumber(const char* name, uint64_t fallback);

// A fresh directory, removed with its contents at the end (unless the run keeps test files for
// the card-number scan: tests/support/test-artifacts.h). Short enough for socket paths.
class TempDir {
public:
  TempDir();
  ~TempDir();
  KJ_DISALLOW_COPY(TempDir);

  kj::StringPtr path() const { return path_; }
  kj::String file(kj::StringPtr name) const { return kj::str(path_, "/", name); }

private:
  kj::String path_;
};

struct Pipe {
  kj::AutoCloseFd read;
  kj::AutoCloseFd write;
};

Pipe makePipe();

// Reads what is available on `fd` into `into`; false at end of file.
bool readSome(int fd, kj::Vector<char>& into);

// A poll() entry; -1 makes poll() skip it (it would still report POLLHUP with no events asked).
struct pollfd pollIn(int fd, bool wanted);

int exitCodeOf(int status);

// A child process, killed and reaped on destruction if it is still running; its exit is
// observed on a pidfd, which poll() can wait on with a timeout.
class Child {
public:
  // Starts argv[0] with stdin from /dev/null, stdout to `out` and stderr to `err`.
  Child(kj::ArrayPtr<const kj::StringPtr> argv, int out, int err);
  ~Child() noexcept(false);
  KJ_DISALLOW_COPY(Child);

  int fd() const { return pidfd.get(); }
  pid_t pid() const { return pid_; }
  bool exited() const { return exitCode != nullptr; }
  kj::Maybe<int> code() const { return exitCode; }

  void signal(int number);

  // Call when the pidfd polls readable: reaps the child.
  void reap();

private:
  pid_t pid_;
  kj::AutoCloseFd pidfd;
  kj::Maybe<int> exitCode;
};

struct ProcessResult {
  int exitCode;
  kj::String out;
  kj::String err;
};

// Runs a short-lived command to its end and returns its exit code and output.
ProcessResult runProcess(std::initializer_list<kj::StringPtr> argv,
                         kj::Duration timeout = STEP_TIMEOUT);
ProcessResult runProcess(kj::ArrayPtr<const kj::StringPtr> argv,
                         kj::Duration timeout = STEP_TIMEOUT);

kj::Vector<kj::String> splitLines(kj::StringPtr text);

// The value of `key=` in a logfmt line (unquoted values only); null when absent.
kj::Maybe<kj::String> logField(kj::StringPtr line, kj::StringPtr key);

struct DaemonOptions {
  uint32_t shards = 1;
  kj::StringPtr logLevel = "info";
  uint32_t drainTimeoutMs = 10000;
  // `[host] data_dir`; empty leaves the default (inside the daemon's temporary directory).
  kj::String dataDir = nullptr;
  // The body of `[listen]`; empty: TCP 127.0.0.1:0 and a unix socket, both `insecure = true`
  // (their callers are "anonymous").
  kj::String listen = nullptr;
  // `[[access]]` tables; empty: "anonymous" may call everything.
  kj::String access = nullptr;
  // Other tables (e.g. `[deploy]`, `[tls]`), placed before the plugins.
  kj::String extra = nullptr;
  // `[admin] group`; empty: none (mode 0600).
  kj::String adminGroup = nullptr;
  // The `[security]` table's lines; empty means `allow_unsigned = true` (the fixtures are not
  // signed; tests of signing set their own).
  kj::String security = nullptr;
  // `[[plugin]]` tables, appended to the config as they are.
  kj::String plugins = nullptr;
};

// The echo fixture as a `[[plugin]]` table; `config` holds lines of its `[plugin.config]`.
kj::String echoPlugin(kj::StringPtr config = "");

// A `[[plugin]]` table for the plugin file at `path`: `databases` is the inside of its
// `databases = [...]` list (e.g. `"ledger"`), `config` the lines of its `[plugin.config]` and
// any subtables; either may be empty.
kj::String pluginTable(kj::StringPtr path, kj::StringPtr databases = "", kj::StringPtr config = "");

// A `[databases.NAME]` table: a SQLite file in the daemon's data_dir, or, when `conninfo` is set,
// a PostgreSQL database (see tests/support/postgres-server.h).
kj::String databaseTable(kj::StringPtr name, uint32_t maxConnections, kj::StringPtr conninfo = "");

// A payhostd process serving on TCP 127.0.0.1:0, a unix socket (both plaintext, for "anonymous",
// unless `DaemonOptions::listen` says otherwise) and the admin socket, all in a fresh temporary
// directory. The constructor returns once the daemon has logged `host.ready`.
class DaemonProcess {
public:
  explicit DaemonProcess(DaemonOptions options);
  ~DaemonProcess() noexcept(false);
  KJ_DISALLOW_COPY(DaemonProcess);

  kj::StringPtr adminSocket() const { return adminSocket_; }
  kj::String adminAddress() const { return kj::str("unix:", adminSocket_); }
  kj::String tcpAddress() const { return kj::str("127.0.0.1:", port_); }
  kj::String unixAddress() const { return kj::str("unix:", unixSocket_); }
  kj::StringPtr configPath() const { return configPath_; }
  // The daemon's temporary directory (for certificates and other files a test adds).
  const TempDir& directory() const { return dir; }
  pid_t pid() const { return child->pid(); }

  void signal(int number) { child->signal(number); }

  // The first log line containing `needle`, reading more of the log until it appears.
  kj::StringPtr waitForLog(kj::StringPtr needle, kj::Duration timeout = STEP_TIMEOUT);

  // All log lines containing `needle`, once there are `count` of them.
  kj::Vector<kj::StringPtr> waitForLogCount(kj::StringPtr needle, size_t count,
                                            kj::Duration timeout = STEP_TIMEOUT);

  // Reads whatever the daemon has logged so far without waiting, so that a long test that
  // does not look at the log never lets the pipe fill up (the daemon would block writing).
  void readAvailableLog();

  // Log lines read so far that contain `needle`.
  kj::Vector<kj::StringPtr> find(kj::StringPtr needle) const;

  bool logged(kj::StringPtr needle) const { return indexOf(needle) != nullptr; }

  // Index of the first line read so far containing `needle`, for checking order.
  kj::Maybe<size_t> indexOf(kj::StringPtr needle) const;

  // Waits for the process to exit and its log to end; returns the exit code.
  int waitForExit(kj::Duration timeout);

  // Starts payhostd again, with the same config and directory, after it exited (e.g. after
  // SIGKILL and `waitForExit`); returns once it has logged `host.ready`. The log starts afresh.
  // TCP port 0 gets a new port: a peer that must find it again uses `unixAddress()`.
  void restart();

  kj::String logText() const { return kj::strArray(lines, "\n"); }

private:
  void start();
  // Fails the running test if the log read so far has a sanitizer report.
  void checkSanitizerReports();
  // Reads what arrives on the log before `deadline`; false at its end or when the deadline
  // passed with nothing new.
  bool readLog(kj::TimePoint deadline);
  kj::Maybe<int> tryWaitForExit(kj::Duration timeout);
  // Keeps a line of the daemon's log, in memory and in `payhostd.log` in its directory (which the
  // card-number scan at the end of the run searches).
  void addLine(kj::String line);

  TempDir dir;
  kj::AutoCloseFd logFile;
  kj::String configPath_;
  kj::String unixSocket_;
  kj::String adminSocket_;
  kj::Own<Child> child;
  kj::AutoCloseFd log;
  kj::Vector<char> partial;
  kj::Vector<kj::String> lines;
  uint16_t port_ = 0;
};

kj::Promise<kj::Own<kj::AsyncIoStream>> connectTo(kj::AsyncIoContext& io, kj::StringPtr address);

// One client connection to payhostd: the Gateway (data plane) or Admin (admin socket).
template <typename Interface>
class Connection {
public:
  Connection(kj::AsyncIoContext& io, kj::StringPtr address)
      : stream(connectTo(io, address).wait(io.waitScope)),
        rpc(kj::heap<capnp::TwoPartyClient>(*stream)),
        client(rpc->bootstrap().castAs<Interface>()) {}

  // A FraudScreen service by name through the gateway (pipelined, not awaited).
  schema::FraudScreen::Client service(kj::StringPtr name) {
    auto request = client.getServiceRequest();
    request.setName(name);
    return request.send().getService().template castAs<schema::FraudScreen>();
  }

  // The echo fixture's service.
  schema::FraudScreen::Client echo() { return service("test.echo"); }

private:
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> rpc;

public:
  typename Interface::Client client;
};

// The service `name` through the gateway as `Interface` (pipelined, not awaited).
template <typename Interface>
typename Interface::Client gatewayService(Connection<schema::Gateway>& connection,
                                          kj::StringPtr name) {
  auto request = connection.client.getServiceRequest();
  request.setName(name);
  return request.send().getService().template castAs<Interface>();
}

// A new connection to payhostd's Gateway (payhostd gives each to the next shard in turn) and one
// service on it, `name`, as `Interface`.
template <typename Interface>
struct ServiceConnection {
  ServiceConnection(kj::AsyncIoContext& io, kj::StringPtr address, kj::StringPtr name)
      : gateway(io, address), service(gatewayService<Interface>(gateway, name)) {}
  Connection<schema::Gateway> gateway;
  typename Interface::Client service;
};

kj::Promise<ScreenResponse> screen(schema::FraudScreen::Client& echo, kj::StringPtr token,
                                   int64_t amount, kj::StringPtr merchant = "merchant-1");

// The echo fixture answers with the amount as score and [token, label] as fired rules.
void expectEcho(ScreenResponse& response, kj::StringPtr token, int64_t amount,
                kj::StringPtr label = "echo");

std::string typeOf(const kj::Exception& e);
std::string describe(const kj::Exception& e);

class EndToEnd : public testing::Test {
protected:
  // KJ's destructors may throw; a test's may not.
  ~EndToEnd() noexcept override {}

  // Waits for `promise`; fails the test if it takes longer than `timeout`.
  template <typename T>
  T await(kj::Promise<T>&& promise, kj::Duration timeout = STEP_TIMEOUT) {
    // The loop's timer stands still while the test blocks outside it (starting payhostd or
    // PostgreSQL, for seconds on a loaded machine); a poll brings it up to date, or the timeout
    // below could be over before it starts.
    io.waitScope.poll();
    return promise
        .exclusiveJoin(io.provider->getTimer().afterDelay(timeout).then(
            []() -> T { KJ_FAIL_ASSERT("timed out waiting for payhostd"); }))
        .wait(io.waitScope);
  }

  // Waits for `promise` to fail and returns the failure.
  template <typename T>
  kj::Exception awaitFailure(kj::Promise<T>&& promise, kj::Duration timeout = STEP_TIMEOUT) {
    auto outcome =
        await(promise.ignoreResult().then(
                  []() -> kj::Maybe<kj::Exception> { return nullptr; },
                  [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); }),
              timeout);
    KJ_IF_MAYBE (e, outcome) {
      return kj::mv(*e);
    }
    KJ_FAIL_ASSERT("expected a failure, but it succeeded");
  }

  capnp::Response<schema::Admin::StatusResults> status(Connection<schema::Admin>& admin);

  // Polls the daemon's status until `expected` calls are in flight.
  void waitForCallsInFlight(Connection<schema::Admin>& admin, uint32_t expected,
                            kj::Duration timeout = STEP_TIMEOUT);

  kj::AsyncIoContext io = kj::setupAsyncIo();
};

}  // namespace payhost::test
