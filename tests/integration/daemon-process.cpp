#include "daemon-process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "tests/support/test-artifacts.h"

#if !defined(PAYHOSTD) || !defined(PAYHOST_FIXTURE_DIR)
#error "PAYHOSTD and PAYHOST_FIXTURE_DIR must be defined by the build"
#endif

namespace payhost::test {

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

TempDir::TempDir() {
  // Short enough for the unix socket paths put in it; a longer base falls back to /tmp, and
  // retireTestDir() copies the files to the artifacts root at the end.
  auto base = testsupport::testTempBase().native();
  if (base.size() > 60) base = "/tmp";
  auto pattern = kj::str(base.c_str(), "/payhostd-test.XXXXXX");
  if (mkdtemp(pattern.begin()) == nullptr) KJ_FAIL_SYSCALL("mkdtemp", errno, pattern);
  // payhostd names files by their canonical path; so do the expectations.
  char* real = realpath(pattern.cStr(), nullptr);
  if (real == nullptr) KJ_FAIL_SYSCALL("realpath", errno, pattern);
  path_ = kj::str(real);
  free(real);
}

TempDir::~TempDir() {
  testsupport::retireTestDir(path_.cStr());
}

uint64_t envNumber(const char* name, uint64_t fallback) {
  const char* text = getenv(name);
  return text == nullptr ? fallback : strtoull(text, nullptr, 10);
}

Pipe makePipe() {
  int fds[2];
  KJ_SYSCALL(pipe2(fds, O_CLOEXEC));
  // A daemon blocks when its log pipe is full, and a test that does not read the log for a while
  // (a long property run) would stall it: 1 MiB (the default pipe-max-size) instead of 64 KiB
  // leaves room. Best effort; readAvailableLog() is still the way to keep up.
  (void)fcntl(fds[0], F_SETPIPE_SZ, 1 << 20);
  return Pipe{kj::AutoCloseFd(fds[0]), kj::AutoCloseFd(fds[1])};
}

bool readSome(int fd, kj::Vector<char>& into) {
  char buffer[8192];
  ssize_t n;
  KJ_SYSCALL(n = read(fd, buffer, sizeof(buffer)));
  into.addAll(buffer, buffer + n);
  return n > 0;
}

struct pollfd pollIn(int fd, bool wanted) {
  return {wanted ? fd : -1, POLLIN, 0};
}

int exitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

Child::Child(kj::ArrayPtr<const kj::StringPtr> argv, int out, int err) {
  auto args = kj::heapArrayBuilder<char*>(argv.size() + 1);
  for (auto arg : argv) {
    args.add(const_cast<char*>(arg.cStr()));
  }
  args.add(nullptr);
  auto array = args.finish();
  int devNull;
  KJ_SYSCALL(devNull = open("/dev/null", O_RDONLY | O_CLOEXEC));
  kj::AutoCloseFd devNullOwner(devNull);
  KJ_SYSCALL(pid_ = fork());
  if (pid_ == 0) {
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
  KJ_SYSCALL(fd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0)));
  pidfd = kj::AutoCloseFd(fd);
}

Child::~Child() noexcept(false) {
  if (exitCode == nullptr) {
    syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
    int status;
    waitpid(pid_, &status, 0);
  }
}

void Child::signal(int number) {
  KJ_REQUIRE(!exited(), "the process has already exited");
  KJ_SYSCALL(syscall(SYS_pidfd_send_signal, pidfd.get(), number, nullptr, 0));
}

void Child::reap() {
  if (exited()) return;
  int status;
  pid_t reaped;
  KJ_SYSCALL(reaped = waitpid(pid_, &status, WNOHANG));
  if (reaped == pid_) exitCode = exitCodeOf(status);
}

ProcessResult runProcess(std::initializer_list<kj::StringPtr> argv, kj::Duration timeout) {
  return runProcess(kj::arrayPtr(argv.begin(), argv.size()), timeout);
}

ProcessResult runProcess(kj::ArrayPtr<const kj::StringPtr> argv, kj::Duration timeout) {
  auto outPipe = makePipe();
  auto errPipe = makePipe();
  Child child(argv, outPipe.write, errPipe.write);
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

kj::Maybe<kj::String> logField(kj::StringPtr line, kj::StringPtr key) {
  auto needle = kj::str(" ", key, "=");
  const char* at = strstr(line.cStr(), needle.cStr());
  if (at == nullptr) return nullptr;
  const char* value = at + needle.size();
  const char* end = strchr(value, ' ');
  return kj::heapString(value, end == nullptr ? strlen(value) : end - value);
}

kj::String echoPlugin(kj::StringPtr config) {
  return kj::str("[[plugin]]\npath = \"", fixture("fixture-echo.so"), "\"\n",
                 config.size() > 0 ? kj::str("[plugin.config]\n", config) : kj::String(), "\n");
}

kj::String pluginTable(kj::StringPtr path, kj::StringPtr databases, kj::StringPtr config) {
  return kj::str("[[plugin]]\npath = \"", path, "\"\n",
                 databases.size() > 0 ? kj::str("databases = [", databases, "]\n") : kj::String(),
                 config.size() > 0 ? kj::str("[plugin.config]\n", config, "\n") : kj::String());
}

kj::String databaseTable(kj::StringPtr name, uint32_t maxConnections, kj::StringPtr conninfo) {
  return kj::str("[databases.", name, "]\n",
                 conninfo.size() > 0
                     ? kj::str("driver = \"postgresql\"\nconninfo = \"", conninfo, "\"\n")
                     : kj::str("driver = \"sqlite\"\n"),
                 "max_connections = ", maxConnections, "\nlease_wait_ms = 5000\n");
}

DaemonProcess::DaemonProcess(DaemonOptions options)
    : configPath_(dir.file("payhostd.toml")),
      unixSocket_(dir.file("gateway.sock")),
      adminSocket_(dir.file("admin.sock")) {
  kj::Vector<kj::String> config;
  config.add(kj::str("[host]"));
  config.add(kj::str("shards = ", options.shards));
  config.add(kj::str("log_level = \"", options.logLevel, "\""));
  config.add(kj::str("drain_timeout_ms = ", options.drainTimeoutMs));
  if (options.dataDir.size() > 0) config.add(kj::str("data_dir = \"", options.dataDir, "\""));
  config.add(kj::str("[listen]"));
  if (options.listen.size() > 0) {
    config.add(kj::mv(options.listen));
  } else {
    config.add(kj::str("tcp = [{ address = \"127.0.0.1:0\", insecure = true }]"));
    config.add(kj::str("unix = [{ path = \"", unixSocket_, "\", insecure = true }]"));
  }
  config.add(kj::str("[admin]"));
  config.add(kj::str("socket = \"", adminSocket_, "\""));
  if (options.adminGroup.size() > 0) {
    config.add(kj::str("group = \"", options.adminGroup, "\""));
  }
  config.add(kj::str("[security]"));
  config.add(options.security.size() > 0 ? kj::mv(options.security)
                                         : kj::str("allow_unsigned = true"));
  if (options.access.size() > 0) {
    config.add(kj::mv(options.access));
  } else {
    config.add(kj::str("[[access]]\nidentity = \"anonymous\"\nservices = [\"*\"]"));
  }
  if (options.extra.size() > 0) config.add(kj::mv(options.extra));
  config.add(kj::mv(options.plugins));
  writeFile(configPath_, kj::strArray(config, "\n"));
  start();
}

void DaemonProcess::start() {
  auto pipe = makePipe();
  if (logFile == nullptr) {
    int fd;
    auto path = dir.file("payhostd.log");
    KJ_SYSCALL(fd = open(path.cStr(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600), path);
    logFile = kj::AutoCloseFd(fd);
  }
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

DaemonProcess::~DaemonProcess() noexcept(false) {
  if (!child->exited()) {
    child->signal(SIGTERM);
    KJ_IF_MAYBE (code, tryWaitForExit(STEP_TIMEOUT)) {
      if (*code != 0) ADD_FAILURE() << "payhostd exited " << *code << "\n" << s(logText());
    } else {
      ADD_FAILURE() << "payhostd did not exit after SIGTERM\n" << s(logText());
    }
  }
  checkSanitizerReports();
}

void DaemonProcess::restart() {
  KJ_REQUIRE(child->exited(), "restart() needs the daemon to have exited");
  checkSanitizerReports();
  lines.clear();
  partial.clear();
  log = nullptr;
  start();
}

void DaemonProcess::checkSanitizerReports() {
  for (auto& line : lines) {
    if (contains(line, "ERROR: AddressSanitizer") || contains(line, "ERROR: LeakSanitizer") ||
        contains(line, "runtime error:")) {
      ADD_FAILURE() << "payhostd printed a sanitizer report:\n" << s(logText());
      break;
    }
  }
}

kj::StringPtr DaemonProcess::waitForLog(kj::StringPtr needle, kj::Duration timeout) {
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

kj::Vector<kj::StringPtr> DaemonProcess::waitForLogCount(kj::StringPtr needle, size_t count,
                                                         kj::Duration timeout) {
  auto deadline = now() + timeout;
  for (;;) {
    auto found = find(needle);
    if (found.size() >= count) return found;
    if (!readLog(deadline)) {
      KJ_FAIL_ASSERT("payhostd logged too few lines", needle, count, found.size(), logText());
    }
  }
}

void DaemonProcess::readAvailableLog() {
  // A deadline already passed makes each poll() return at once.
  auto past = now();
  while (readLog(past)) {
  }
}

kj::Vector<kj::StringPtr> DaemonProcess::find(kj::StringPtr needle) const {
  kj::Vector<kj::StringPtr> found;
  for (auto& line : lines) {
    if (contains(line, needle)) found.add(line);
  }
  return found;
}

kj::Maybe<size_t> DaemonProcess::indexOf(kj::StringPtr needle) const {
  for (size_t i = 0; i < lines.size(); ++i) {
    if (contains(lines[i], needle)) return i;
  }
  return nullptr;
}

int DaemonProcess::waitForExit(kj::Duration timeout) {
  KJ_IF_MAYBE (code, tryWaitForExit(timeout)) {
    return *code;
  }
  KJ_FAIL_ASSERT("payhostd did not exit in time", logText());
}

bool DaemonProcess::readLog(kj::TimePoint deadline) {
  if (log == nullptr) return false;
  struct pollfd fd = {log, POLLIN, 0};
  int ready;
  KJ_SYSCALL(ready = poll(&fd, 1, msUntil(deadline)));
  if (ready == 0) return false;
  if (!readSome(log, partial)) {
    log = nullptr;
    if (partial.size() > 0) addLine(kj::heapString(partial.asPtr()));
    partial.clear();
    return true;
  }
  size_t start = 0;
  for (size_t i = 0; i < partial.size(); ++i) {
    if (partial[i] == '\n') {
      addLine(kj::heapString(partial.begin() + start, i - start));
      start = i + 1;
    }
  }
  kj::Vector<char> rest;
  rest.addAll(partial.begin() + start, partial.end());
  partial = kj::mv(rest);
  return true;
}

void DaemonProcess::addLine(kj::String line) {
  kj::FdOutputStream out(logFile.get());
  out.write(line.begin(), line.size());
  out.write("\n", 1);
  lines.add(kj::mv(line));
}

kj::Maybe<int> DaemonProcess::tryWaitForExit(kj::Duration timeout) {
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

kj::Promise<kj::Own<kj::AsyncIoStream>> connectTo(kj::AsyncIoContext& io, kj::StringPtr address) {
  return io.provider->getNetwork().parseAddress(address).then(
      [](kj::Own<kj::NetworkAddress> parsed) { return parsed->connect().attach(kj::mv(parsed)); });
}

kj::Promise<ScreenResponse> screen(schema::FraudScreen::Client& echo, kj::StringPtr token,
                                   int64_t amount, kj::StringPtr merchant) {
  auto request = echo.screenRequest();
  auto body = request.initRequest();
  body.setMerchantId(merchant);
  auto money = body.initAmount();
  money.setMinorUnits(amount);
  money.setCurrency("EUR");
  body.setCardToken(token);
  return request.send();
}

void expectEcho(ScreenResponse& response, kj::StringPtr token, int64_t amount,
                kj::StringPtr label) {
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

capnp::Response<schema::Admin::StatusResults> EndToEnd::status(Connection<schema::Admin>& admin) {
  return await(admin.client.statusRequest().send());
}

void EndToEnd::waitForCallsInFlight(Connection<schema::Admin>& admin, uint32_t expected,
                                    kj::Duration timeout) {
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

}  // namespace payhost::test
