// End-to-end tests of payhostd and payhostctl: the real binaries run as child processes with a
// config in a fresh temporary directory and the real fixture plugins; clients are Cap'n Proto
// clients in this process, over real TCP (port 0) and unix sockets; shutdown is by real signals.
//
// Nothing waits by sleeping. The daemon's log is read from a pipe with poll() and a deadline,
// its exit is awaited on a pidfd with a deadline, and figures it reports (calls in flight) are
// polled over its Admin interface until they match or a deadline passes.
//
// Every DaemonProcess is stopped with SIGTERM at the end of its test unless the test stopped it,
// must exit 0, and must not have printed a sanitizer report.

#include <payhost/host.capnp.h>
#include <payhost/payments.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/io.h>
#include <kj/time.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>

#if !defined(PAYHOSTD) || !defined(PAYHOSTCTL) || !defined(PAYHOST_FIXTURE_DIR)
#error "PAYHOSTD, PAYHOSTCTL and PAYHOST_FIXTURE_DIR must be defined by the build"
#endif

namespace payhost {
namespace {

using schema::Admin;
using schema::FraudScreen;
using schema::Gateway;
using testing::HasSubstr;
using ScreenResponse = capnp::Response<FraudScreen::ScreenResults>;

// Generous: a sanitized payhostd on a busy 2-core machine starts slowly. Passing tests never
// wait this long.
constexpr kj::Duration START_TIMEOUT = 30 * kj::SECONDS;
constexpr kj::Duration STEP_TIMEOUT = 10 * kj::SECONDS;

std::string s(kj::StringPtr text) {
  return std::string(text.begin(), text.size());
}

bool contains(kj::StringPtr text, kj::StringPtr needle) {
  return strstr(text.cStr(), needle.cStr()) != nullptr;
}

kj::String fixture(kj::StringPtr file) {
  return kj::str(PAYHOST_FIXTURE_DIR, "/", file);
}

kj::TimePoint now() {
  return kj::systemPreciseMonotonicClock().now();
}

// Milliseconds left until `deadline`, for poll(); 0 once it has passed.
int msUntil(kj::TimePoint deadline) {
  auto current = now();
  if (current >= deadline) return 0;
  return static_cast<int>((deadline - current) / kj::MILLISECONDS) + 1;
}

void writeFile(kj::StringPtr path, kj::StringPtr text) {
  int fd;
  KJ_SYSCALL(fd = open(path.cStr(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), path);
  kj::AutoCloseFd owned(fd);
  kj::FdOutputStream(fd).write(text.begin(), text.size());
}

// A fresh directory, removed with its contents at the end. Short enough for socket paths.
class TempDir {
public:
  TempDir() {
    const char* base = getenv("TMPDIR");
    if (base == nullptr || *base == '\0' || strlen(base) > 60) base = "/tmp";
    auto pattern = kj::str(base, "/payhostd-test.XXXXXX");
    if (mkdtemp(pattern.begin()) == nullptr) KJ_FAIL_SYSCALL("mkdtemp", errno, pattern);
    // payhostd names files by their canonical path; so do the expectations.
    char* real = realpath(pattern.cStr(), nullptr);
    if (real == nullptr) KJ_FAIL_SYSCALL("realpath", errno, pattern);
    path = kj::str(real);
    free(real);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path.cStr(), ignored);
  }
  KJ_DISALLOW_COPY(TempDir);

  kj::String file(kj::StringPtr name) const { return kj::str(path, "/", name); }

private:
  kj::String path;
};

struct Pipe {
  kj::AutoCloseFd read;
  kj::AutoCloseFd write;
};

Pipe makePipe() {
  int fds[2];
  KJ_SYSCALL(pipe2(fds, O_CLOEXEC));
  return Pipe{kj::AutoCloseFd(fds[0]), kj::AutoCloseFd(fds[1])};
}

// Reads what is available on `fd` into `into`; false at end of file.
bool readSome(int fd, kj::Vector<char>& into) {
  char buffer[8192];
  ssize_t n;
  KJ_SYSCALL(n = read(fd, buffer, sizeof(buffer)));
  into.addAll(buffer, buffer + n);
  return n > 0;
}

// A poll() entry; -1 makes poll() skip it (it would still report POLLHUP with no events asked).
struct pollfd pollIn(int fd, bool wanted) {
  return {wanted ? fd : -1, POLLIN, 0};
}

int exitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// A child process, killed and reaped on destruction if it is still running; its exit is
// observed on a pidfd, which poll() can wait on with a timeout.
class Child {
public:
  // Starts argv[0] with stdin from /dev/null, stdout to `out` and stderr to `err`.
  Child(kj::ArrayPtr<const kj::StringPtr> argv, int out, int err) {
    auto args = kj::heapArrayBuilder<char*>(argv.size() + 1);
    for (auto arg : argv) {
      args.add(const_cast<char*>(arg.cStr()));
    }
    args.add(nullptr);
    auto array = args.finish();
    int devNull;
    KJ_SYSCALL(devNull = open("/dev/null", O_RDONLY | O_CLOEXEC));
    kj::AutoCloseFd devNullOwner(devNull);
    KJ_SYSCALL(pid = fork());
    if (pid == 0) {
      // Only async-signal-safe calls until exec. The child starts with no signal blocked or
      // ignored, whatever this process did.
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      ::signal(SIGPIPE, SIG_DFL);
      dup2(devNull, STDIN_FILENO);
      dup2(out, STDOUT_FILENO);
      dup2(err, STDERR_FILENO);
      execv(array[0], array.begin());
      _exit(127);
    }
    int fd;
    KJ_SYSCALL(fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
    pidfd = kj::AutoCloseFd(fd);
  }
  ~Child() noexcept(false) {
    if (exitCode == nullptr) {
      syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
      int status;
      waitpid(pid, &status, 0);
    }
  }
  KJ_DISALLOW_COPY(Child);

  int fd() const { return pidfd.get(); }
  bool exited() const { return exitCode != nullptr; }
  kj::Maybe<int> code() const { return exitCode; }

  void signal(int number) {
    KJ_REQUIRE(!exited(), "the process has already exited");
    KJ_SYSCALL(syscall(SYS_pidfd_send_signal, pidfd.get(), number, nullptr, 0));
  }

  // Call when the pidfd polls readable: reaps the child.
  void reap() {
    if (exited()) return;
    int status;
    pid_t reaped;
    KJ_SYSCALL(reaped = waitpid(pid, &status, WNOHANG));
    if (reaped == pid) exitCode = exitCodeOf(status);
  }

private:
  pid_t pid;
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
                         kj::Duration timeout = STEP_TIMEOUT) {
  auto outPipe = makePipe();
  auto errPipe = makePipe();
  Child child(kj::arrayPtr(argv.begin(), argv.size()), outPipe.write, errPipe.write);
  outPipe.write = nullptr;
  errPipe.write = nullptr;
  kj::Vector<char> out, err;
  bool outOpen = true, errOpen = true;
  auto deadline = now() + timeout;
  while (outOpen || errOpen || !child.exited()) {
    struct pollfd fds[3] = {pollIn(outPipe.read, outOpen), pollIn(errPipe.read, errOpen),
                            pollIn(child.fd(), !child.exited())};
    int ready;
    KJ_SYSCALL(ready = poll(fds, 3, msUntil(deadline)));
    if (ready == 0) {
      KJ_FAIL_ASSERT("command timed out", *argv.begin(), kj::str(out.asPtr()),
                     kj::str(err.asPtr()));
    }
    if (fds[0].revents != 0) outOpen = readSome(outPipe.read, out);
    if (fds[1].revents != 0) errOpen = readSome(errPipe.read, err);
    if (fds[2].revents != 0) child.reap();
  }
  return ProcessResult{KJ_ASSERT_NONNULL(child.code()), kj::str(out.asPtr()), kj::str(err.asPtr())};
}

kj::Vector<kj::String> splitLines(kj::StringPtr text) {
  kj::Vector<kj::String> lines;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\n') {
      lines.add(kj::heapString(text.slice(start, i)));
      start = i + 1;
    }
  }
  if (start < text.size()) lines.add(kj::heapString(text.slice(start)));
  return lines;
}

// The value of `key=` in a logfmt line (unquoted values only); null when absent.
kj::Maybe<kj::String> logField(kj::StringPtr line, kj::StringPtr key) {
  auto needle = kj::str(" ", key, "=");
  const char* at = strstr(line.cStr(), needle.cStr());
  if (at == nullptr) return nullptr;
  const char* value = at + needle.size();
  const char* end = strchr(value, ' ');
  return kj::heapString(value, end == nullptr ? strlen(value) : end - value);
}

struct DaemonOptions {
  uint32_t shards = 1;
  kj::StringPtr logLevel = "info";
  uint32_t drainTimeoutMs = 10000;
  // `[[plugin]]` tables, appended to the config as they are.
  kj::String plugins;
};

// The echo fixture as a `[[plugin]]` table; `config` holds lines of its `[plugin.config]`.
kj::String echoPlugin(kj::StringPtr config = "") {
  return kj::str("[[plugin]]\npath = \"", fixture("fixture-echo.so"), "\"\n",
                 config.size() > 0 ? kj::str("[plugin.config]\n", config) : kj::String(), "\n");
}

// A payhostd process serving on TCP 127.0.0.1:0, a unix socket and the admin socket, all in a
// fresh temporary directory. The constructor returns once the daemon has logged `host.ready`.
class DaemonProcess {
public:
  explicit DaemonProcess(DaemonOptions options)
      : configPath_(dir.file("payhostd.toml")),
        unixSocket_(dir.file("gateway.sock")),
        adminSocket_(dir.file("admin.sock")) {
    kj::String config[] = {
        kj::str("[host]"),
        kj::str("shards = ", options.shards),
        kj::str("log_level = \"", options.logLevel, "\""),
        kj::str("drain_timeout_ms = ", options.drainTimeoutMs),
        kj::str("[listen]"),
        kj::str("tcp = [\"127.0.0.1:0\"]"),
        kj::str("unix = [\"", unixSocket_, "\"]"),
        kj::str("[admin]"),
        kj::str("socket = \"", adminSocket_, "\""),
        kj::mv(options.plugins),
    };
    writeFile(configPath_, kj::strArray(config, "\n"));
    auto pipe = makePipe();
    kj::StringPtr argv[] = {PAYHOSTD, "-c", configPath_};
    child = kj::heap<Child>(argv, pipe.write, pipe.write);
    log = kj::mv(pipe.read);

    waitForLog("event=host.ready", START_TIMEOUT);
    auto listener = waitForLog("event=listener.open address=127.0.0.1:");
    auto address = KJ_ASSERT_NONNULL(logField(listener, "address"));
    port_ = static_cast<uint16_t>(
        strtoul(address.cStr() + KJ_ASSERT_NONNULL(address.findLast(':')) + 1, nullptr, 10));
    KJ_ASSERT(port_ != 0, listener);
  }

  ~DaemonProcess() noexcept(false) {
    if (!child->exited()) {
      child->signal(SIGTERM);
      KJ_IF_MAYBE (code, tryWaitForExit(STEP_TIMEOUT)) {
        if (*code != 0) ADD_FAILURE() << "payhostd exited " << *code << "\n" << s(logText());
      } else {
        ADD_FAILURE() << "payhostd did not exit after SIGTERM\n" << s(logText());
      }
    }
    for (auto& line : lines) {
      if (contains(line, "ERROR: AddressSanitizer") || contains(line, "ERROR: LeakSanitizer") ||
          contains(line, "runtime error:")) {
        ADD_FAILURE() << "payhostd printed a sanitizer report:\n" << s(logText());
        break;
      }
    }
  }
  KJ_DISALLOW_COPY(DaemonProcess);

  kj::StringPtr adminSocket() const { return adminSocket_; }
  kj::String adminAddress() const { return kj::str("unix:", adminSocket_); }
  kj::String tcpAddress() const { return kj::str("127.0.0.1:", port_); }
  kj::String unixAddress() const { return kj::str("unix:", unixSocket_); }

  void signal(int number) { child->signal(number); }

  // The first log line containing `needle`, reading more of the log until it appears.
  kj::StringPtr waitForLog(kj::StringPtr needle, kj::Duration timeout = STEP_TIMEOUT) {
    auto deadline = now() + timeout;
    for (size_t i = 0;; ++i) {
      while (i == lines.size()) {
        if (!readLog(deadline)) {
          KJ_FAIL_ASSERT("payhostd did not log", needle, logText());
        }
      }
      if (contains(lines[i], needle)) return lines[i];
    }
  }

  // All log lines containing `needle`, once there are `count` of them.
  kj::Vector<kj::StringPtr> waitForLogCount(kj::StringPtr needle, size_t count,
                                            kj::Duration timeout = STEP_TIMEOUT) {
    auto deadline = now() + timeout;
    for (;;) {
      auto found = find(needle);
      if (found.size() >= count) return found;
      if (!readLog(deadline)) {
        KJ_FAIL_ASSERT("payhostd logged too few lines", needle, count, found.size(), logText());
      }
    }
  }

  // Log lines read so far that contain `needle`.
  kj::Vector<kj::StringPtr> find(kj::StringPtr needle) const {
    kj::Vector<kj::StringPtr> found;
    for (auto& line : lines) {
      if (contains(line, needle)) found.add(line);
    }
    return found;
  }

  bool logged(kj::StringPtr needle) const { return indexOf(needle) != nullptr; }

  // Index of the first line read so far containing `needle`, for checking order.
  kj::Maybe<size_t> indexOf(kj::StringPtr needle) const {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (contains(lines[i], needle)) return i;
    }
    return nullptr;
  }

  // Waits for the process to exit and its log to end; returns the exit code.
  int waitForExit(kj::Duration timeout) {
    KJ_IF_MAYBE (code, tryWaitForExit(timeout)) {
      return *code;
    }
    KJ_FAIL_ASSERT("payhostd did not exit in time", logText());
  }

  kj::String logText() const { return kj::strArray(lines, "\n"); }

private:
  // Reads what arrives on the log before `deadline`; false at its end or when the deadline
  // passed with nothing new.
  bool readLog(kj::TimePoint deadline) {
    if (log == nullptr) return false;
    struct pollfd fd = {log, POLLIN, 0};
    int ready;
    KJ_SYSCALL(ready = poll(&fd, 1, msUntil(deadline)));
    if (ready == 0) return false;
    if (!readSome(log, partial)) {
      log = nullptr;
      if (partial.size() > 0) lines.add(kj::heapString(partial.asPtr()));
      partial.clear();
      return true;
    }
    size_t start = 0;
    for (size_t i = 0; i < partial.size(); ++i) {
      if (partial[i] == '\n') {
        lines.add(kj::heapString(partial.begin() + start, i - start));
        start = i + 1;
      }
    }
    kj::Vector<char> rest;
    rest.addAll(partial.begin() + start, partial.end());
    partial = kj::mv(rest);
    return true;
  }

  kj::Maybe<int> tryWaitForExit(kj::Duration timeout) {
    auto deadline = now() + timeout;
    while (log != nullptr || !child->exited()) {
      struct pollfd fds[2] = {pollIn(log.get(), log != nullptr),
                              pollIn(child->fd(), !child->exited())};
      int ready;
      KJ_SYSCALL(ready = poll(fds, 2, msUntil(deadline)));
      if (ready == 0) return nullptr;
      if (fds[0].revents != 0) readLog(deadline);
      if (fds[1].revents != 0) child->reap();
    }
    return child->code();
  }

  TempDir dir;
  kj::String configPath_;
  kj::String unixSocket_;
  kj::String adminSocket_;
  kj::Own<Child> child;
  kj::AutoCloseFd log;
  kj::Vector<char> partial;
  kj::Vector<kj::String> lines;
  uint16_t port_ = 0;
};

kj::Promise<kj::Own<kj::AsyncIoStream>> connectTo(kj::AsyncIoContext& io, kj::StringPtr address) {
  return io.provider->getNetwork().parseAddress(address).then(
      [](kj::Own<kj::NetworkAddress> parsed) { return parsed->connect().attach(kj::mv(parsed)); });
}

// One client connection to payhostd: the Gateway (data plane) or Admin (admin socket).
template <typename Interface>
class Connection {
public:
  Connection(kj::AsyncIoContext& io, kj::StringPtr address)
      : stream(connectTo(io, address).wait(io.waitScope)),
        rpc(kj::heap<capnp::TwoPartyClient>(*stream)),
        client(rpc->bootstrap().castAs<Interface>()) {}

  // The echo fixture's service, by name through the gateway (pipelined, not awaited).
  FraudScreen::Client echo() {
    auto request = client.getServiceRequest();
    request.setName("test.echo");
    return request.send().getService().template castAs<FraudScreen>();
  }

private:
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> rpc;

public:
  typename Interface::Client client;
};

kj::Promise<ScreenResponse> screen(FraudScreen::Client& echo, kj::StringPtr token, int64_t amount,
                                   kj::StringPtr merchant = "merchant-1") {
  auto request = echo.screenRequest();
  auto body = request.initRequest();
  body.setMerchantId(merchant);
  auto money = body.initAmount();
  money.setMinorUnits(amount);
  money.setCurrency("EUR");
  body.setCardToken(token);
  return request.send();
}

// The echo fixture answers with the amount as score and [token, label] as fired rules.
void expectEcho(ScreenResponse& response, kj::StringPtr token, int64_t amount,
                kj::StringPtr label = "echo") {
  auto verdict = response.getVerdict();
  EXPECT_EQ(verdict.getDecision(), schema::FraudDecision::ALLOW);
  EXPECT_EQ(verdict.getScore(), amount);
  auto rules = verdict.getFiredRules();
  ASSERT_EQ(rules.size(), 2u);
  EXPECT_EQ(s(rules[0]), s(token));
  EXPECT_EQ(s(rules[1]), s(label));
}

std::string typeOf(const kj::Exception& e) {
  return s(kj::str(e.getType()));
}

std::string describe(const kj::Exception& e) {
  return s(e.getDescription());
}

class EndToEnd : public testing::Test {
protected:
  // KJ's destructors may throw; a test's may not.
  ~EndToEnd() noexcept override {}

  // Waits for `promise`; fails the test if it takes longer than `timeout`.
  template <typename T>
  T await(kj::Promise<T>&& promise, kj::Duration timeout = STEP_TIMEOUT) {
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

  capnp::Response<Admin::StatusResults> status(Connection<Admin>& admin) {
    return await(admin.client.statusRequest().send());
  }

  // Polls the daemon's status until `expected` calls are in flight.
  void waitForCallsInFlight(Connection<Admin>& admin, uint32_t expected,
                            kj::Duration timeout = STEP_TIMEOUT) {
    auto deadline = now() + timeout;
    for (;;) {
      auto inFlight = status(admin).getStatus().getCallsInFlight();
      if (inFlight == expected) return;
      KJ_ASSERT(now() < deadline, "calls in flight never reached the expected count", expected,
                inFlight);
      // The poll's pace, not a synchronisation: the condition above decides.
      await(io.provider->getTimer().afterDelay(2 * kj::MILLISECONDS));
    }
  }

  kj::AsyncIoContext io = kj::setupAsyncIo();
};

class Payhostctl : public EndToEnd {};

class Payhostd : public EndToEnd {
protected:
  // SIGTERM and SIGINT alike: calls in flight finish, new calls and connections are refused,
  // plugins are unloaded, and the daemon exits 0.
  void drainsOnSignal(int number, kj::StringPtr name) {
    constexpr uint32_t CALLS = 50;
    // Long enough that the checks between the signal and the answers fit well inside it.
    DaemonProcess daemon({.shards = 2, .plugins = echoPlugin("delay_ms = 1000\n")});
    Connection<Gateway> overTcp(io, daemon.tcpAddress());
    Connection<Gateway> overUnix(io, daemon.unixAddress());
    auto echoTcp = overTcp.echo();
    auto echoUnix = overUnix.echo();
    kj::Vector<kj::Promise<ScreenResponse>> calls;
    for (uint32_t i = 0; i < CALLS; ++i) {
      calls.add(screen(i % 2 == 0 ? echoTcp : echoUnix, kj::str("tok-", i), 100 + i));
    }
    Connection<Admin> admin(io, daemon.adminAddress());
    waitForCallsInFlight(admin, CALLS);

    daemon.signal(number);
    auto drainingLine = daemon.waitForLog("event=host.draining");
    EXPECT_THAT(s(drainingLine), HasSubstr(kj::str("reason=", name, " ").cStr()));
    EXPECT_THAT(s(drainingLine), HasSubstr(kj::str("calls_in_flight=", CALLS).cStr()));

    // Once draining: a new call on an open connection is refused...
    auto late = awaitFailure(screen(echoTcp, "tok-late", 1));
    EXPECT_EQ(typeOf(late), "disconnected");
    EXPECT_THAT(describe(late), HasSubstr("payhostd is draining"));
    // ...and so are new connections.
    awaitFailure(connectTo(io, daemon.tcpAddress()));
    awaitFailure(connectTo(io, daemon.unixAddress()));

    // Every call that was in flight is answered.
    kj::Vector<kj::Promise<void>> answered;
    for (uint32_t i = 0; i < CALLS; ++i) {
      answered.add(calls[i].then(
          [i](ScreenResponse&& response) { expectEcho(response, kj::str("tok-", i), 100 + i); },
          [i](kj::Exception&& e) {
            ADD_FAILURE() << "call " << i << " (over " << (i % 2 == 0 ? "tcp" : "unix")
                          << ") failed: " << describe(e);
          }));
    }
    await(kj::joinPromises(answered.releaseAsArray()));

    EXPECT_EQ(daemon.waitForExit(STEP_TIMEOUT), 0);
    auto drainingAt = daemon.indexOf("event=host.draining");
    auto drainedAt = daemon.indexOf("event=host.drained");
    auto unloadedAt =
        daemon.indexOf("event=plugin.unloaded plugin=echo version=1.0.0 result=unmapped");
    auto stoppedAt = daemon.indexOf("event=host.stopped");
    KJ_IF_MAYBE (draining, drainingAt) {
      KJ_IF_MAYBE (drained, drainedAt) {
        KJ_IF_MAYBE (unloaded, unloadedAt) {
          KJ_IF_MAYBE (stopped, stoppedAt) {
            EXPECT_LT(*draining, *drained);
            EXPECT_LT(*drained, *unloaded);
            EXPECT_LT(*unloaded, *stopped);
            EXPECT_FALSE(daemon.logged("event=host.drain_deadline"));
            return;
          }
        }
      }
    }
    ADD_FAILURE() << "missing shutdown events:\n" << s(daemon.logText());
  }
};

TEST_F(Payhostd, ServesEchoOverTcpAndUnixSocket) {
  DaemonProcess daemon({.plugins = echoPlugin("label = \"blue\"\n")});
  for (auto& address : {daemon.tcpAddress(), daemon.unixAddress()}) {
    SCOPED_TRACE(s(address));
    Connection<Gateway> connection(io, address);

    auto listed = await(connection.client.listServicesRequest().send());
    auto services = listed.getServices();
    ASSERT_EQ(services.size(), 1u);
    EXPECT_EQ(s(services[0].getName()), "test.echo");
    EXPECT_EQ(s(services[0].getPlugin()), "echo");
    EXPECT_EQ(s(services[0].getVersion()), "1.0.0");
    EXPECT_EQ(services[0].getInterfaceId(), capnp::typeId<FraudScreen>());
    EXPECT_THAT(s(services[0].getInterfaceName()), HasSubstr("FraudScreen"));

    auto echo = connection.echo();
    auto response = await(screen(echo, "tok_4242", 1234));
    expectEcho(response, "tok_4242", 1234, "blue");
  }
}

TEST_F(Payhostd, SpreadsConnectionsOverShards) {
  DaemonProcess daemon({.shards = 2, .logLevel = "debug", .plugins = echoPlugin()});
  // Each shard made its own instance of the plugin.
  daemon.waitForLog("event=echo.started plugin=echo version=1.0.0 shard=0");
  daemon.waitForLog("event=echo.started plugin=echo version=1.0.0 shard=1");

  constexpr size_t CONNECTIONS = 8;
  constexpr int64_t CALLS = 4;
  kj::Vector<kj::Own<Connection<Gateway>>> connections;
  kj::Vector<kj::Promise<ScreenResponse>> calls;
  for (size_t i = 0; i < CONNECTIONS; ++i) {
    connections.add(kj::heap<Connection<Gateway>>(io, daemon.tcpAddress()));
    auto echo = connections.back()->echo();
    auto merchant = kj::str("conn-", i);
    for (int64_t j = 0; j < CALLS; ++j) {
      calls.add(screen(echo, kj::str("tok-", i, "-", j), j, merchant));
    }
  }
  auto responses = await(kj::joinPromises(calls.releaseAsArray()));
  for (size_t i = 0; i < CONNECTIONS; ++i) {
    for (int64_t j = 0; j < CALLS; ++j) {
      expectEcho(responses[i * CALLS + j], kj::str("tok-", i, "-", j), j);
    }
  }

  Connection<Admin> admin(io, daemon.adminAddress());
  auto response = status(admin);
  auto hostStatus = response.getStatus();
  EXPECT_EQ(hostStatus.getShards(), 2u);
  EXPECT_EQ(hostStatus.getConnectionsOpen(), CONNECTIONS);
  EXPECT_EQ(hostStatus.getCallsTotal(), CONNECTIONS * CALLS);
  EXPECT_EQ(hostStatus.getCallsFailed(), 0u);

  // The plugin logs each call with its shard; a call is logged before it is answered, so every
  // line is in the log by now.
  auto logged = daemon.waitForLogCount("event=echo.screen", CONNECTIONS * CALLS);
  std::map<std::string, std::set<std::string>> shardsOfConnection;
  for (auto line : logged) {
    auto merchant = KJ_ASSERT_NONNULL(logField(line, "merchant"));
    auto shard = KJ_ASSERT_NONNULL(logField(line, "shard"));
    shardsOfConnection[s(merchant)].insert(s(shard));
  }
  ASSERT_EQ(shardsOfConnection.size(), CONNECTIONS);
  std::map<std::string, size_t> connectionsOnShard;
  for (auto& [merchant, shards] : shardsOfConnection) {
    // A connection belongs to one shard for its life.
    ASSERT_EQ(shards.size(), 1u) << merchant;
    ++connectionsOnShard[*shards.begin()];
  }
  // The host spreads connections itself, so 8 long-lived connections split evenly.
  EXPECT_EQ(connectionsOnShard["0"], CONNECTIONS / 2);
  EXPECT_EQ(connectionsOnShard["1"], CONNECTIONS / 2);
}

TEST_F(Payhostd, UnknownServiceErrorNamesItAndListsServedOnes) {
  DaemonProcess daemon({.plugins = echoPlugin()});
  Connection<Gateway> connection(io, daemon.tcpAddress());

  auto request = connection.client.getServiceRequest();
  request.setName("payments.nope");
  auto e = awaitFailure(request.send());
  EXPECT_EQ(typeOf(e), "failed");
  EXPECT_THAT(describe(e), HasSubstr("unknown service 'payments.nope'"));
  EXPECT_THAT(describe(e), HasSubstr("this host serves: test.echo"));

  // The connection is still good.
  auto echo = connection.echo();
  auto response = await(screen(echo, "tok-after", 7));
  expectEcho(response, "tok-after", 7);
}

TEST_F(Payhostd, UnknownMethodIsUnimplemented) {
  DaemonProcess daemon({.plugins = echoPlugin()});
  Connection<Gateway> connection(io, daemon.tcpAddress());
  auto echo = connection.echo();

  // A method FraudScreen does not have.
  auto typeless =
      capnp::Capability::Client(echo).typelessRequest(capnp::typeId<FraudScreen>(), 7, nullptr);
  auto noMethod = awaitFailure(typeless.send());
  EXPECT_EQ(typeOf(noMethod), "unimplemented") << describe(noMethod);

  // An interface the service does not implement.
  auto authorize = echo.castAs<schema::CardProcessor>().authorizeRequest();
  authorize.initRequest().setMerchantId("merchant-1");
  auto noInterface = awaitFailure(authorize.send());
  EXPECT_EQ(typeOf(noInterface), "unimplemented") << describe(noInterface);

  auto response = await(screen(echo, "tok-after", 9));
  expectEcho(response, "tok-after", 9);
}

TEST_F(Payhostd, PluginThatThrowsFailsOnlyThatCall) {
  DaemonProcess daemon({.plugins = echoPlugin("throw_token = \"tok-boom\"\n")});
  Connection<Gateway> connection(io, daemon.tcpAddress());
  auto echo = connection.echo();

  auto before = await(screen(echo, "tok-before", 1));
  expectEcho(before, "tok-before", 1);

  auto e = awaitFailure(screen(echo, "tok-boom", 2));
  EXPECT_EQ(typeOf(e), "failed");
  EXPECT_THAT(describe(e), HasSubstr("echo plugin was asked to fail this call"));

  for (int64_t i = 0; i < 3; ++i) {
    auto after = await(screen(echo, kj::str("tok-after-", i), 10 + i));
    expectEcho(after, kj::str("tok-after-", i), 10 + i);
  }

  Connection<Admin> admin(io, daemon.adminAddress());
  auto list = await(admin.client.listRequest().send());
  ASSERT_EQ(list.getPlugins().size(), 1u);
  EXPECT_EQ(list.getPlugins()[0].getCallsTotal(), 5u);
  EXPECT_EQ(list.getPlugins()[0].getCallsFailed(), 1u);
  EXPECT_EQ(status(admin).getStatus().getCallsFailed(), 1u);
}

struct BadPlugin {
  kj::StringPtr file;
  // What the refusal must say about it.
  kj::StringPtr reason;
};

const BadPlugin BAD_PLUGINS[] = {
    {"fixture-duplicate-service.so",
     "service 'test.echo' of plugin duplicate-service 1.0.0 is already provided by plugin echo "
     "1.0.0"},
    {"fixture-wrong-abi.so", "SDK ABI mismatch: plugin built against SDK ABI 99.0"},
    {"fixture-wrong-fingerprint.so",
     "build fingerprint mismatch: plugin 'compiler=clang-18 stdlib=libc++-abi1 capnp=1.0.1'"},
    {"fixture-missing-entry.so", "no entry symbol 'payhost_plugin_v1'"},
    {"fixture-not-elf.so", "the file is not an ELF shared library"},
    {"fixture-throws-in-create.so",
     "failed in its constructor: cannot reach the issuer's simulator"},
    {"no-such-plugin.so", "cannot open plugin file: No such file or directory"},
};
constexpr uint32_t BAD_PLUGIN_COUNT = sizeof(BAD_PLUGINS) / sizeof(BAD_PLUGINS[0]);

// Echo first (so the duplicate is the one refused), then every bad plugin.
DaemonOptions withBadPlugins() {
  kj::Vector<kj::String> tables;
  tables.add(echoPlugin());
  for (auto& bad : BAD_PLUGINS) {
    tables.add(kj::str("[[plugin]]\npath = \"", fixture(bad.file), "\"\n"));
  }
  return DaemonOptions{.shards = 2, .plugins = kj::strArray(tables, "\n")};
}

TEST_F(Payhostd, RefusesBadPluginsAndServesTheGoodOne) {
  DaemonProcess daemon(withBadPlugins());
  for (auto& bad : BAD_PLUGINS) {
    SCOPED_TRACE(s(bad.file));
    auto refused = daemon.find(kj::str("event=plugin.refused path=", fixture(bad.file), " "));
    ASSERT_EQ(refused.size(), 1u) << s(daemon.logText());
    EXPECT_THAT(s(refused[0]), HasSubstr(bad.reason.cStr()));
  }
  auto ready = daemon.waitForLog("event=host.ready");
  EXPECT_THAT(s(ready),
              HasSubstr(kj::str("plugins_serving=1 plugins_failed=", BAD_PLUGIN_COUNT).cStr()));

  Connection<Gateway> connection(io, daemon.tcpAddress());
  auto listed = await(connection.client.listServicesRequest().send());
  ASSERT_EQ(listed.getServices().size(), 1u);
  EXPECT_EQ(s(listed.getServices()[0].getName()), "test.echo");
  auto echo = connection.echo();
  auto response = await(screen(echo, "tok-1", 5));
  expectEcho(response, "tok-1", 5);
}

TEST_F(Payhostctl, ListShowsEachRefusedPluginWithItsError) {
  DaemonProcess daemon(withBadPlugins());
  auto result = runProcess({PAYHOSTCTL, "-s", daemon.adminSocket(), "list"});
  ASSERT_EQ(result.exitCode, 0) << s(result.err);
  auto lines = splitLines(result.out);

  bool echoListed = false;
  for (auto& line : lines) {
    if (line.startsWith("echo ")) {
      echoListed = true;
      EXPECT_THAT(s(line), HasSubstr("1.0.0"));
      EXPECT_THAT(s(line), HasSubstr("serving"));
      EXPECT_THAT(s(line), HasSubstr("test.echo"));
    }
  }
  EXPECT_TRUE(echoListed) << s(result.out);

  for (auto& bad : BAD_PLUGINS) {
    SCOPED_TRACE(s(bad.file));
    auto pathLine = kj::str("  ", fixture(bad.file));
    size_t at = 0;
    while (at < lines.size() && lines[at] != pathLine) {
      ++at;
    }
    ASSERT_LT(at + 1, lines.size()) << s(result.out);
    EXPECT_THAT(s(lines[at - 1]), HasSubstr("failed"));
    EXPECT_TRUE(lines[at + 1].startsWith("  error: ")) << s(lines[at + 1]);
    EXPECT_THAT(s(lines[at + 1]), HasSubstr(bad.reason.cStr()));
  }
}

TEST_F(Payhostctl, StatusCountsServingAndFailedPlugins) {
  DaemonProcess daemon(withBadPlugins());
  auto result = runProcess({PAYHOSTCTL, "-s", daemon.adminSocket(), "status"});
  ASSERT_EQ(result.exitCode, 0) << s(result.err);
  EXPECT_THAT(s(result.out), HasSubstr("state serving"));
  EXPECT_THAT(s(result.out), HasSubstr("shards 2"));
  EXPECT_THAT(s(result.out),
              HasSubstr(kj::str("plugins serving 1  failed ", BAD_PLUGIN_COUNT, "\n").cStr()));
  EXPECT_THAT(s(result.out), HasSubstr(kj::str("listening on ", daemon.tcpAddress(), "\n").cStr()));
  EXPECT_THAT(s(result.out),
              HasSubstr(kj::str("listening on ", daemon.unixAddress(), "\n").cStr()));
}

TEST_F(Payhostd, SigtermDrainsCallsInFlightThenExits) {
  drainsOnSignal(SIGTERM, "SIGTERM");
}

TEST_F(Payhostd, SigintDrainsCallsInFlightThenExits) {
  drainsOnSignal(SIGINT, "SIGINT");
}

TEST_F(Payhostd, DrainDeadlineCutsCallsStillInFlight) {
  DaemonProcess daemon({.drainTimeoutMs = 200, .plugins = echoPlugin("delay_ms = 5000\n")});
  Connection<Gateway> connection(io, daemon.tcpAddress());
  auto echo = connection.echo();
  auto call = screen(echo, "tok-slow", 1);
  Connection<Admin> admin(io, daemon.adminAddress());
  waitForCallsInFlight(admin, 1);

  auto signalled = now();
  daemon.signal(SIGTERM);
  // The call fails when its connection is closed at the deadline; it does not hang.
  auto cut = awaitFailure(kj::mv(call));
  EXPECT_EQ(typeOf(cut), "disconnected") << describe(cut);
  EXPECT_EQ(daemon.waitForExit(STEP_TIMEOUT), 0);
  auto elapsedMs = (now() - signalled) / kj::MILLISECONDS;
  EXPECT_LT(elapsedMs, 2000);

  auto deadline = daemon.find("event=host.drain_deadline");
  ASSERT_EQ(deadline.size(), 1u) << s(daemon.logText());
  EXPECT_THAT(s(deadline[0]), HasSubstr("calls_cut=1"));
  EXPECT_THAT(s(deadline[0]), HasSubstr("deadline_ms=200"));
  EXPECT_FALSE(daemon.logged("event=host.drained"));
  // The plugin's cut call was destroyed before its library was closed.
  EXPECT_TRUE(daemon.logged("event=plugin.unloaded plugin=echo version=1.0.0 result=unmapped"))
      << s(daemon.logText());
  EXPECT_TRUE(daemon.logged("event=host.stopped"));
}

// A config that is valid apart from what `host` says.
kj::String configWithHost(const TempDir& dir, kj::StringPtr host) {
  return kj::str("[host]\n", host,
                 "[listen]\n"
                 "tcp = [\"127.0.0.1:0\"]\n"
                 "[admin]\n"
                 "socket = \"",
                 dir.file("admin.sock"), "\"\n");
}

TEST_F(Payhostd, RefusesUnknownConfigKey) {
  TempDir dir;
  auto path = dir.file("payhostd.toml");
  writeFile(path, configWithHost(dir, "shards = 1\nshardz = 2\n"));
  auto result = runProcess({PAYHOSTD, "-c", path});
  EXPECT_EQ(result.exitCode, 2);
  EXPECT_THAT(s(result.err),
              HasSubstr(kj::str("payhostd: ", path, ":3:1: host.shardz: unknown key").cStr()));
  EXPECT_NE(access(dir.file("admin.sock").cStr(), F_OK), 0) << "the daemon started anyway";
}

TEST_F(Payhostd, RefusesConfigValueOfWrongType) {
  TempDir dir;
  auto path = dir.file("payhostd.toml");
  writeFile(path, configWithHost(dir, "shards = \"two\"\n"));
  auto result = runProcess({PAYHOSTD, "-c", path});
  EXPECT_EQ(result.exitCode, 2);
  EXPECT_THAT(
      s(result.err),
      HasSubstr(kj::str("payhostd: ", path, ":2:10: host.shards: expected an integer, got a string")
                    .cStr()));
}

TEST_F(Payhostd, RefusesMissingConfigFile) {
  TempDir dir;
  auto path = dir.file("absent.toml");
  auto result = runProcess({PAYHOSTD, "-c", path});
  EXPECT_EQ(result.exitCode, 2);
  EXPECT_THAT(
      s(result.err),
      HasSubstr(kj::str("payhostd: ", path, ": cannot read config file: No such file or directory")
                    .cStr()));
}

TEST_F(Payhostd, CheckAcceptsGoodConfigWithoutStarting) {
  TempDir dir;
  auto path = dir.file("payhostd.toml");
  writeFile(path, kj::str(configWithHost(dir, "shards = 2\n"), echoPlugin()));
  auto result = runProcess({PAYHOSTD, "--check", "-c", path});
  EXPECT_EQ(result.exitCode, 0) << s(result.err);
  EXPECT_THAT(s(result.out), HasSubstr(kj::str(path, ": ok (1 plugins, 2 shards)").cStr()));
  EXPECT_NE(access(dir.file("admin.sock").cStr(), F_OK), 0) << "--check started the daemon";

  auto bad = runProcess({PAYHOSTD, "--check", "-c", dir.file("absent.toml")});
  EXPECT_EQ(bad.exitCode, 2);
}

TEST_F(Payhostctl, FailsNamingTheSocketWhenNothingListens) {
  TempDir dir;
  auto path = dir.file("admin.sock");
  // No file at all.
  auto absent = runProcess({PAYHOSTCTL, "-s", path, "status"});
  EXPECT_EQ(absent.exitCode, 1);
  EXPECT_THAT(s(absent.err), HasSubstr(kj::str("payhostctl: ", path, ": ").cStr()));
  EXPECT_THAT(s(absent.err), HasSubstr("No such file or directory"));

  // A socket file left behind, with nobody listening on it.
  int fd;
  KJ_SYSCALL(fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  kj::AutoCloseFd owned(fd);
  struct sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  KJ_ASSERT(path.size() < sizeof(address.sun_path));
  memcpy(address.sun_path, path.cStr(), path.size() + 1);
  KJ_SYSCALL(bind(fd, reinterpret_cast<struct sockaddr*>(&address), sizeof(address)));
  owned = nullptr;
  auto stale = runProcess({PAYHOSTCTL, "-s", path, "list"});
  EXPECT_EQ(stale.exitCode, 1);
  EXPECT_THAT(s(stale.err), HasSubstr(kj::str("payhostctl: ", path, ": ").cStr()));
  EXPECT_THAT(s(stale.err), HasSubstr("Connection refused"));
}

}  // namespace
}  // namespace payhost
