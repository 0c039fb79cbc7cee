// payhost-swap-bench: hot swap under load, beside the same load without swaps, in one run.
//
//   payhost-swap-bench --payhostd build/host/payhostd --fixtures build/tests/fixtures/plugins
//       [--rounds 3] [--seconds 5] [--in-flight 64] [--swap-interval-ms 1000] [--json FILE]
//
// payhostd runs as a separate process (one shard, log level warning) serving `test.echo` from
// fixture-echo.so. The bench keeps `--in-flight` calls in flight on one TCP connection (closed
// loop) and measures two cases in turns (baseline, swaps, baseline, swaps, ...) so drift on a
// shared machine hits both:
//   baseline  the load alone;
//   swaps     the same load while the bench deploys fixture-echo-v2, -v3, -v2, ... through the
//             Admin interface every `--swap-interval-ms`, deploy N with the config
//             `label = "sN"`, which echo returns as its second fired rule.
// Per case: calls/s, p50/p99/p99.9/max latency, server CPU per call, calls failed. Per swap: the
// DeployReport's load/switch/drain times, calls drained and cut and unload result, and two times
// seen from outside:
//   - the first answer carrying the new label, after sending the deploy and after the switch
//     (estimated as sending + loadMicros, so it also holds the admin request's transit);
//   - the old library gone from /proc/<payhostd>/maps (its memfd name), polled every 1 ms once
//     the deploy has returned, after the return and after the switch.
// Every answer is also checked: its score must be the amount sent, and a call issued after an
// answer from deploy N must not be answered by an older deploy (a "stale" answer).
//
// Single-threaded: the load, the deploys and the polling share the bench's one event loop.

#include "bench/loadgen.h"
#include "bench/server-process.h"

#include <payhost/host.capnp.h>
#include <payhost/payments.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>

#include <CLI/CLI.hpp>
#include <climits>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace payhost::bench {
namespace {

using schema::FraudScreen;

// How long a swap may wait for its first new answer, or for the old library to go.
constexpr auto SWAP_WAIT_LIMIT = 5 * kj::SECONDS;
constexpr auto WARM_UP = 300 * kj::MILLISECONDS;
constexpr const char* MEMFD_PREFIX = "/memfd:payhost:";

// --- payhostd as a process ----------------------------------------------------------------------

// Waits up to 10 s for payhostd to serve.
uint16_t waitForPayhostd(kj::AsyncIoContext& io, pid_t pid, kj::StringPtr adminSocket) {
  return waitForPort(io, pid, "payhostd", [&]() { return payhostdPort(io, adminSocket); });
}

// The names of the plugin libraries `pid` has mapped ("/memfd:payhost:<file>:<id>"), read from
// /proc/<pid>/maps, and how many mappings it has in all.
struct Mappings {
  std::set<std::string> plugins;
  size_t total = 0;
};

Mappings readMappings(pid_t pid) {
  Mappings result;
  std::ifstream maps(kj::str("/proc/", pid, "/maps").cStr());
  std::string line;
  while (std::getline(maps, line)) {
    ++result.total;
    auto at = line.find(MEMFD_PREFIX);
    if (at == std::string::npos) continue;
    auto end = line.find(' ', at);
    result.plugins.insert(line.substr(at, end == std::string::npos ? end : end - at));
  }
  return result;
}

size_t openFds(pid_t pid) {
  size_t count = 0;
  DIR* dir = opendir(kj::str("/proc/", pid, "/fd").cStr());
  if (dir == nullptr) return 0;
  while (auto* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count;
}

double rssMiB(pid_t pid) {
  std::ifstream status(kj::str("/proc/", pid, "/status").cStr());
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024;
  }
  return 0;
}

struct ProcessFigures {
  size_t mappings;
  size_t pluginMappings;
  size_t fds;
  double rss;
};

ProcessFigures processFigures(pid_t pid) {
  auto maps = readMappings(pid);
  return {maps.total, maps.plugins.size(), openFds(pid), rssMiB(pid)};
}

// --- statistics ---------------------------------------------------------------------------------

struct Spread {
  double median = 0;
  double min = 0;
  double max = 0;
};

Spread spread(std::vector<double> values) {
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  double median = n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  return {median, values.front(), values.back()};
}

// Nearest rank, as Histogram::percentile; 0 when empty.
double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  auto rank = static_cast<size_t>(std::ceil(p / 100 * static_cast<double>(values.size())));
  return values[rank == 0 ? 0 : rank - 1];
}

double millis(kj::Duration duration) {
  return static_cast<double>(duration / kj::NANOSECONDS) / 1e6;
}

// --- what the answers say -----------------------------------------------------------------------

// Reads the deploy number out of each answer's label ("sN") and checks answers against what the
// bench had already seen. Lets a swap wait for the first answer of its deploy. Shard-local.
class AnswerTracker {
public:
  explicit AnswerTracker(const kj::MonotonicClock& clock) : clock(clock) {}
  KJ_DISALLOW_COPY(AnswerTracker);

  // The newest deploy seen in an answer so far; a call captures it when it is issued.
  uint64_t newestSeen() const { return newest; }

  // Resolves with the time the first answer labelled `deploy` arrived.
  kj::Promise<kj::TimePoint> firstAnswerOf(uint64_t deploy) {
    auto paf = kj::newPromiseAndFulfiller<kj::TimePoint>();
    awaited = deploy;
    fulfiller = kj::mv(paf.fulfiller);
    return kj::mv(paf.promise);
  }
  void stopWaiting() {
    awaited = 0;
    fulfiller = nullptr;
  }

  void answered(schema::FraudVerdict::Reader verdict, uint32_t amount, uint64_t seenAtIssue) {
    auto rules = verdict.getFiredRules();
    if (verdict.getScore() != amount || rules.size() != 2 || rules[1].size() < 2 ||
        rules[1][0] != 's') {
      ++wrongResults;
      return;
    }
    uint64_t deploy = strtoull(rules[1].cStr() + 1, nullptr, 10);
    if (deploy < seenAtIssue) ++staleAnswers;
    if (deploy > newest) newest = deploy;
    if (deploy == awaited) {
      KJ_IF_MAYBE (waiting, fulfiller) {
        (*waiting)->fulfill(clock.now());
      }
      stopWaiting();
    }
  }

  uint64_t wrongResults = 0;
  uint64_t staleAnswers = 0;

private:
  const kj::MonotonicClock& clock;
  uint64_t newest = 0;
  uint64_t awaited = 0;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<kj::TimePoint>>> fulfiller;
};

// --- swaps --------------------------------------------------------------------------------------

struct SwapRecord {
  uint64_t number = 0;
  int round = 0;
  std::string toVersion;
  std::string outcome;
  std::string error;
  double loadMs = 0;
  double switchMs = 0;
  double drainMs = 0;
  uint64_t callsDrained = 0;
  uint64_t callsCut = 0;
  std::string unloadResult;
  double sentToReturnMs = 0;
  // Negative when it did not happen within SWAP_WAIT_LIMIT.
  double sentToFirstNewMs = -1;
  double switchToFirstNewMs = -1;
  double returnToUnmappedMs = -1;
  double switchToUnmappedMs = -1;
  // Reads of the maps it took to see the old library gone: 1 means gone when the deploy returned.
  uint32_t mapChecks = 0;
};

bool deployed(const SwapRecord& swap) {
  return swap.outcome == "deployed";
}

const char* outcomeName(schema::DeployOutcome outcome) {
  switch (outcome) {
    case schema::DeployOutcome::DEPLOYED:
      return "deployed";
    case schema::DeployOutcome::REFUSED:
      return "refused";
    case schema::DeployOutcome::CANARY_PROMOTED:
      return "canary-promoted";
    case schema::DeployOutcome::CANARY_ROLLED_BACK:
      return "canary-rolled-back";
    default:
      return "unspecified";
  }
}

// Deploys v2, v3, v2, ... through the Admin interface and measures each swap. Shard-local.
class Swapper {
public:
  Swapper(kj::Timer& timer, schema::Admin::Client admin, AnswerTracker& tracker, pid_t payhostd,
          std::string v2, std::string v3, std::string currentLibrary)
      : timer(timer),
        clock(kj::systemPreciseMonotonicClock()),
        admin(kj::mv(admin)),
        tracker(tracker),
        payhostd(payhostd),
        v2(kj::mv(v2)),
        v3(kj::mv(v3)),
        currentLibrary(kj::mv(currentLibrary)) {}
  KJ_DISALLOW_COPY(Swapper);

  // Swaps at windowStart + (k + 1/2) * interval, for as long as that leaves half an interval
  // before `windowEnd`, each after the one before has been measured.
  kj::Promise<void> run(int round, kj::TimePoint windowStart, kj::TimePoint windowEnd,
                        kj::Duration interval, uint64_t k = 0) {
    auto due = windowStart + interval * static_cast<int64_t>(k) + interval / 2;
    if (due + interval / 2 > windowEnd) return kj::READY_NOW;
    return timer.atTime(due)
        .then([this, round]() { return swap(round); })
        .then([this, round, windowStart, windowEnd, interval, k]() {
          return run(round, windowStart, windowEnd, interval, k + 1);
        });
  }

  std::vector<SwapRecord> records;

private:
  kj::Timer& timer;
  const kj::MonotonicClock& clock;
  schema::Admin::Client admin;
  AnswerTracker& tracker;
  pid_t payhostd;
  std::string v2;
  std::string v3;
  // The memfd name of the library serving now.
  std::string currentLibrary;
  uint64_t deploys = 0;

  kj::Promise<void> swap(int round) {
    uint64_t number = ++deploys;
    auto before = readMappings(payhostd).plugins;
    auto request = admin.deployRequest();
    auto body = request.initRequest();
    body.setPath(number % 2 == 1 ? v2 : v3);
    // v3 -> v2 is a downgrade.
    body.setForce(true);
    body.setConfig(kj::str("label = \"s", number, "\"\n"));
    auto firstNew = tracker.firstAnswerOf(number)
                        .then([](kj::TimePoint at) -> kj::Maybe<kj::TimePoint> { return at; })
                        .exclusiveJoin(timer.afterDelay(SWAP_WAIT_LIMIT).then([]() {
                          return kj::Maybe<kj::TimePoint>(nullptr);
                        }));
    kj::TimePoint sent = clock.now();
    return request.send().then([this, round, number, sent, before = kj::mv(before),
                                firstNew = kj::mv(firstNew)](auto&& response) mutable {
      kj::TimePoint returned = clock.now();
      auto report = response.getReport();
      SwapRecord record;
      record.number = number;
      record.round = round;
      record.toVersion = report.getToVersion().cStr();
      record.outcome = outcomeName(report.getOutcome());
      record.error = report.getError().cStr();
      record.loadMs = static_cast<double>(report.getLoadMicros()) / 1e3;
      record.switchMs = static_cast<double>(report.getSwitchMicros()) / 1e3;
      record.drainMs = static_cast<double>(report.getDrainMicros()) / 1e3;
      record.callsDrained = report.getCallsDrained();
      record.callsCut = report.getCallsCut();
      record.unloadResult = report.getUnloadResult().cStr();
      record.sentToReturnMs = millis(returned - sent);
      // The switch starts loadMicros after the daemon took the request, so this estimate is
      // early by the admin request's transit: times after it are upper bounds.
      kj::TimePoint switched = sent + report.getLoadMicros() * kj::MICROSECONDS;
      records.push_back(kj::mv(record));
      size_t index = records.size() - 1;
      if (!deployed(records[index])) {
        tracker.stopWaiting();
        return kj::Promise<void>(kj::READY_NOW);
      }
      // The first check for the old library, which also names the new one.
      auto after = readMappings(payhostd).plugins;
      kj::TimePoint checked = clock.now();
      records[index].mapChecks = 1;
      auto old = kj::mv(currentLibrary);
      for (auto& name : after) {
        if (before.count(name) == 0) currentLibrary = name;
      }
      auto oldGone = after.count(old) == 0
                         ? kj::Promise<kj::Maybe<kj::TimePoint>>(kj::Maybe<kj::TimePoint>(checked))
                         : whenUnmapped(kj::mv(old), returned + SWAP_WAIT_LIMIT, index);
      return oldGone
          .then([this, index, returned, switched](kj::Maybe<kj::TimePoint> gone) {
            KJ_IF_MAYBE (at, gone) {
              records[index].returnToUnmappedMs = millis(*at - returned);
              records[index].switchToUnmappedMs = millis(*at - switched);
            }
          })
          .then([firstNew = kj::mv(firstNew)]() mutable { return kj::mv(firstNew); })
          .then([this, index, sent, switched](kj::Maybe<kj::TimePoint> first) {
            KJ_IF_MAYBE (at, first) {
              records[index].sentToFirstNewMs = millis(*at - sent);
              records[index].switchToFirstNewMs = millis(*at - switched);
            }
          });
    });
  }

  // Resolves with the time `name` was first seen missing from payhostd's maps, checking every
  // 1 ms from 1 ms on (counted in records[index]); null if it is still there at `deadline`.
  kj::Promise<kj::Maybe<kj::TimePoint>> whenUnmapped(std::string name, kj::TimePoint deadline,
                                                     size_t index) {
    return timer.afterDelay(1 * kj::MILLISECONDS)
        .then([this, name = kj::mv(name), deadline,
               index]() mutable -> kj::Promise<kj::Maybe<kj::TimePoint>> {
          ++records[index].mapChecks;
          if (readMappings(payhostd).plugins.count(name) == 0) {
            return kj::Maybe<kj::TimePoint>(clock.now());
          }
          if (clock.now() >= deadline) return kj::Maybe<kj::TimePoint>(nullptr);
          return whenUnmapped(kj::mv(name), deadline, index);
        });
  }
};

// --- the load -----------------------------------------------------------------------------------

struct Measurement {
  double callsPerSecond = 0;
  double p50Micros = 0;
  double p99Micros = 0;
  double p999Micros = 0;
  double maxMicros = 0;
  double serverCpuMicrosPerCall = 0;
  // The bench's own, load and swaps together: both share the machine's cores with payhostd.
  double clientCpuMicrosPerCall = 0;
  uint64_t completed = 0;
  uint64_t failed = 0;
  std::string firstError;
};

// Runs the closed loop for one measurement on a fresh connection; with `swapper`, swaps during
// the measured window.
Measurement measure(kj::AsyncIoContext& io, pid_t pid, uint16_t port, AnswerTracker& tracker,
                    uint32_t inFlight, kj::Duration duration, kj::Maybe<Swapper&> swapper,
                    kj::Duration swapInterval, int round) {
  auto address =
      io.provider->getNetwork().parseAddress(kj::str("127.0.0.1:", port)).wait(io.waitScope);
  auto connection = address->connect().wait(io.waitScope);
  capnp::TwoPartyClient client(*connection);
  auto request = client.bootstrap().castAs<schema::Gateway>().getServiceRequest();
  request.setName("test.echo");
  auto echo = request.send().wait(io.waitScope).getService().castAs<FraudScreen>();

  uint32_t sequence = 0;
  auto issue = [&]() -> kj::Promise<void> {
    auto call = echo.screenRequest();
    auto body = call.initRequest();
    body.setMerchantId("merchant-000042");
    uint32_t amount = 100 + ++sequence % 1000;
    auto money = body.initAmount();
    money.setMinorUnits(amount);
    money.setCurrency("EUR");
    body.setCardToken("tok_visa_approve");
    uint64_t seen = tracker.newestSeen();
    return call.send().then([&tracker, amount, seen](auto&& response) {
      tracker.answered(response.getVerdict(), amount, seen);
    });
  };
  LoadGenerator generator(io.provider->getTimer());
  ClosedLoopOptions options;
  options.concurrency = inFlight;
  options.duration = duration;
  options.warmUp = WARM_UP;
  auto& clock = kj::systemPreciseMonotonicClock();
  auto windowStart = clock.now() + WARM_UP;
  double cpuBefore = 0, clientCpuBefore = 0;
  // The warm-up is excluded from the CPU figures too: sample when measurement starts.
  auto started = io.provider->getTimer()
                     .atTime(windowStart)
                     .then([&]() {
                       cpuBefore = processCpuMicros(pid);
                       clientCpuBefore = processCpuMicros(getpid());
                     })
                     .eagerlyEvaluate(nullptr);
  kj::Promise<void> swaps = kj::READY_NOW;
  KJ_IF_MAYBE (s, swapper) {
    swaps =
        s->run(round, windowStart, windowStart + duration, swapInterval).eagerlyEvaluate(nullptr);
  }
  auto result = generator.runClosedLoop(options, issue).wait(io.waitScope);
  double cpu = processCpuMicros(pid) - cpuBefore;
  double clientCpu = processCpuMicros(getpid()) - clientCpuBefore;
  swaps.wait(io.waitScope);
  Measurement m;
  m.callsPerSecond = result.callsPerSecond;
  m.p50Micros = static_cast<double>(result.latency.percentile(50)) / 1e3;
  m.p99Micros = static_cast<double>(result.latency.percentile(99)) / 1e3;
  m.p999Micros = static_cast<double>(result.latency.percentile(99.9)) / 1e3;
  m.maxMicros = static_cast<double>(result.latency.max()) / 1e3;
  m.completed = result.completed;
  m.failed = result.failed;
  if (result.completed > 0) {
    m.serverCpuMicrosPerCall = cpu / static_cast<double>(result.completed);
    m.clientCpuMicrosPerCall = clientCpu / static_cast<double>(result.completed);
  }
  KJ_IF_MAYBE (error, result.firstError) {
    m.firstError = error->cStr();
  }
  return m;
}

// --- the run ------------------------------------------------------------------------------------

struct Options {
  std::string payhostd;
  std::string fixtures;
  int rounds = 3;
  int seconds = 5;
  uint32_t inFlight = 64;
  uint32_t swapIntervalMs = 1000;
  std::string json;
};

std::string absolutePath(const std::string& path) {
  char resolved[PATH_MAX];
  KJ_REQUIRE(realpath(path.c_str(), resolved) != nullptr, "file not found", path);
  return resolved;
}

template <typename Field>
std::vector<double> column(const std::vector<Measurement>& runs, Field field) {
  std::vector<double> values;
  for (auto& run : runs)
    values.push_back(run.*field);
  return values;
}

// Of the swaps deployed, those where `field` was observed (not negative).
std::vector<double> column(const std::vector<SwapRecord>& swaps, double SwapRecord::*field) {
  std::vector<double> values;
  for (auto& swap : swaps) {
    if (deployed(swap) && swap.*field >= 0) values.push_back(swap.*field);
  }
  return values;
}

// Per-round ratios swaps / baseline of `field`.
std::vector<double> ratios(const std::vector<Measurement>& swaps,
                           const std::vector<Measurement>& baseline, double Measurement::*field) {
  std::vector<double> values;
  for (size_t i = 0; i < swaps.size() && i < baseline.size(); ++i) {
    if (baseline[i].*field > 0) values.push_back(swaps[i].*field / (baseline[i].*field));
  }
  return values;
}

void printCase(const char* name, const std::vector<Measurement>& runs) {
  auto cps = spread(column(runs, &Measurement::callsPerSecond));
  auto p50 = spread(column(runs, &Measurement::p50Micros));
  auto p99 = spread(column(runs, &Measurement::p99Micros));
  auto p999 = spread(column(runs, &Measurement::p999Micros));
  auto max = spread(column(runs, &Measurement::maxMicros));
  auto cpu = spread(column(runs, &Measurement::serverCpuMicrosPerCall));
  auto clientCpu = spread(column(runs, &Measurement::clientCpuMicrosPerCall));
  printf("  %-8s %7.0f calls/s (%.0f-%.0f)\n", name, cps.median, cps.min, cps.max);
  printf(
      "           latency us: p50 %.0f (%.0f-%.0f)  p99 %.0f (%.0f-%.0f)  p99.9 %.0f (%.0f-%.0f)"
      "  max %.0f (%.0f-%.0f)\n",
      p50.median, p50.min, p50.max, p99.median, p99.min, p99.max, p999.median, p999.min, p999.max,
      max.median, max.min, max.max);
  printf("           CPU us/call: payhostd %.1f (%.1f-%.1f), bench %.1f (%.1f-%.1f)\n", cpu.median,
         cpu.min, cpu.max, clientCpu.median, clientCpu.min, clientCpu.max);
}

void jsonCase(std::ostringstream& json, const char* name, const std::vector<Measurement>& runs) {
  json << "  \"" << name << "\": {";
  const char* separator = "";
  auto field = [&](const char* key, double Measurement::*member) {
    auto s = spread(column(runs, member));
    json << separator << "\"" << key << "\": {\"median\": " << s.median << ", \"min\": " << s.min
         << ", \"max\": " << s.max << "}";
    separator = ", ";
  };
  field("calls_per_s", &Measurement::callsPerSecond);
  field("p50_us", &Measurement::p50Micros);
  field("p99_us", &Measurement::p99Micros);
  field("p999_us", &Measurement::p999Micros);
  field("max_us", &Measurement::maxMicros);
  field("server_cpu_us_per_call", &Measurement::serverCpuMicrosPerCall);
  field("client_cpu_us_per_call", &Measurement::clientCpuMicrosPerCall);
  uint64_t failed = 0;
  for (auto& run : runs)
    failed += run.failed;
  json << ", \"calls_failed\": " << failed << "},\n";
}

int runBenchmark(const Options& options) {
  auto v1 = absolutePath(options.fixtures + "/fixture-echo.so");
  auto v2 = absolutePath(options.fixtures + "/fixture-echo-v2.so");
  auto v3 = absolutePath(options.fixtures + "/fixture-echo-v3.so");
  char dir[] = "/tmp/payhost-swap-bench-XXXXXX";
  KJ_ASSERT(mkdtemp(dir) != nullptr);
  auto configPath = kj::str(dir, "/payhostd.toml");
  auto adminSocket = kj::str(dir, "/admin.sock");
  auto logPath = kj::str(dir, "/payhostd.log");
  {
    // As payhost-bench: one shard, warning level (no per-call log lines); the port comes from
    // the admin interface.
    std::ofstream config(configPath.cStr());
    config << "[host]\nshards = 1\nlog_level = \"warning\"\n[listen]\n"
           << "tcp = [{ address = \"127.0.0.1:0\", insecure = true }]\n"
           << "[[access]]\nidentity = \"anonymous\"\nservices = [\"*\"]\n"
           << "[admin]\nsocket = \"" << adminSocket.cStr()
           << "\"\n[security]\nallow_unsigned = true\n[[plugin]]\npath = \"" << v1
           << "\"\n[plugin.config]\nlabel = \"s0\"\n";
  }
  auto io = kj::setupAsyncIo();
  // Timers (the swap schedule, the 1 ms polls) must fire while answers keep the queue busy.
  io.waitScope.setBusyPollInterval(64);
  pid_t pid = startProcess({options.payhostd, "--config", configPath.cStr()}, logPath);
  KJ_DEFER(if (pid > 0) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  });
  uint16_t port = waitForPayhostd(io, pid, adminSocket);
  auto initial = readMappings(pid).plugins;
  KJ_REQUIRE(initial.size() == 1, "expected one plugin library mapped in payhostd", initial.size());

  auto adminAddress =
      io.provider->getNetwork().parseAddress(kj::str("unix:", adminSocket)).wait(io.waitScope);
  auto adminConnection = adminAddress->connect().wait(io.waitScope);
  capnp::TwoPartyClient adminClient(*adminConnection);
  AnswerTracker tracker(kj::systemPreciseMonotonicClock());
  auto admin = adminClient.bootstrap().castAs<schema::Admin>();
  admin.statusRequest().send().wait(io.waitScope);
  Swapper swapper(io.provider->getTimer(), kj::mv(admin), tracker, pid, v2, v3, *initial.begin());
  // Taken with the admin connection open and no data connection, like the figures after.
  auto figuresBefore = processFigures(pid);

  auto duration = options.seconds * kj::SECONDS;
  auto interval = options.swapIntervalMs * kj::MILLISECONDS;
  printf("payhost-swap-bench: hot swap of test.echo under load (payhostd pid %d, 1 shard)\n", pid);
  printf(
      "%u in flight on 1 connection, closed loop; %d rounds of %d s per case, interleaved "
      "(baseline, swaps, ...); a deploy every %u ms; medians (min-max) over rounds\n\n",
      options.inFlight, options.rounds, options.seconds, options.swapIntervalMs);
  fflush(stdout);
  std::vector<Measurement> baseline, swapping;
  for (int round = 1; round <= options.rounds; ++round) {
    baseline.push_back(
        measure(io, pid, port, tracker, options.inFlight, duration, nullptr, interval, round));
    swapping.push_back(
        measure(io, pid, port, tracker, options.inFlight, duration, swapper, interval, round));
    auto& b = baseline.back();
    auto& s = swapping.back();
    printf("round %d: baseline %.0f calls/s p99 %.0f us | swaps %.0f calls/s p99 %.0f us\n", round,
           b.callsPerSecond, b.p99Micros, s.callsPerSecond, s.p99Micros);
    fflush(stdout);
  }
  // Time for payhostd to close the last data connection.
  io.provider->getTimer().afterDelay(200 * kj::MILLISECONDS).wait(io.waitScope);
  auto figuresAfter = processFigures(pid);

  auto& swaps = swapper.records;
  uint64_t baselineFailed = 0, swapFailed = 0;
  std::string firstError;
  for (auto& run : baseline)
    baselineFailed += run.failed;
  for (auto& run : swapping) {
    swapFailed += run.failed;
    if (firstError.empty()) firstError = run.firstError;
  }
  size_t deployedCount = 0, unmappedCount = 0, firstSeenCount = 0, goneAtReturn = 0;
  for (auto& swap : swaps) {
    if (!deployed(swap)) continue;
    ++deployedCount;
    if (swap.unloadResult == "unmapped" && swap.returnToUnmappedMs >= 0) ++unmappedCount;
    if (swap.sentToFirstNewMs >= 0) ++firstSeenCount;
    if (swap.returnToUnmappedMs >= 0 && swap.mapChecks == 1) ++goneAtReturn;
  }

  printf("\n");
  printCase("baseline", baseline);
  printCase("swaps", swapping);
  printf("\n  CALLS FAILED WITH SWAPS: %llu (baseline: %llu)%s%s\n", (unsigned long long)swapFailed,
         (unsigned long long)baselineFailed,
         firstError.empty() ? "" : "; first: ", firstError.c_str());
  printf(
      "  swaps: %zu, deployed %zu; old library unmapped %zu of %zu; first new answer seen %zu of "
      "%zu; stale answers %llu; wrong results %llu\n",
      swaps.size(), deployedCount, unmappedCount, deployedCount, firstSeenCount, deployedCount,
      (unsigned long long)tracker.staleAnswers, (unsigned long long)tracker.wrongResults);

  printf(
      "\nper swap, ms (DeployReport: load, switch, drain; bench: sent->first new answer, "
      "switch->first new, return->unmapped, switch->unmapped, sent->return)\n");
  printf("  %3s %5s %-8s %7s %7s %7s %7s %4s %-12s %8s %8s %8s %8s %8s\n", "#", "round", "to",
         "load", "switch", "drain", "drained", "cut", "unload", "sent>new", "sw>new", "ret>unm",
         "sw>unm", "sent>ret");
  for (auto& swap : swaps) {
    printf(
        "  %3llu %5d %-8s %7.3f %7.3f %7.3f %7llu %4llu %-12s %8.3f %8.3f %8.3f %8.3f %8.3f%s%s\n",
        (unsigned long long)swap.number, swap.round, swap.toVersion.c_str(), swap.loadMs,
        swap.switchMs, swap.drainMs, (unsigned long long)swap.callsDrained,
        (unsigned long long)swap.callsCut,
        deployed(swap) ? swap.unloadResult.c_str() : swap.outcome.c_str(), swap.sentToFirstNewMs,
        swap.switchToFirstNewMs, swap.returnToUnmappedMs, swap.switchToUnmappedMs,
        swap.sentToReturnMs, swap.error.empty() ? "" : "  ", swap.error.c_str());
  }
  struct SwapFigure {
    const char* name;
    const char* key;
    double SwapRecord::*field;
  };
  SwapFigure figures[] = {
      {"load (DeployReport)", "load_ms", &SwapRecord::loadMs},
      {"switch (DeployReport)", "switch_ms", &SwapRecord::switchMs},
      {"drain (DeployReport)", "drain_ms", &SwapRecord::drainMs},
      {"deploy sent -> first new answer", "sent_to_first_new_ms", &SwapRecord::sentToFirstNewMs},
      {"switch -> first new answer", "switch_to_first_new_ms", &SwapRecord::switchToFirstNewMs},
      {"deploy returned -> old unmapped", "return_to_unmapped_ms", &SwapRecord::returnToUnmappedMs},
      {"switch -> old unmapped", "switch_to_unmapped_ms", &SwapRecord::switchToUnmappedMs},
      {"deploy sent -> returned", "sent_to_return_ms", &SwapRecord::sentToReturnMs},
  };
  printf("\nper swap, p50 / p99 / max over %zu swaps, ms\n", deployedCount);
  printf(
      "  (old library already gone at the first read of the maps after the return: %zu of %zu)\n",
      goneAtReturn, deployedCount);
  for (auto& figure : figures) {
    auto values = column(swaps, figure.field);
    printf("  %-32s %8.3f / %8.3f / %8.3f\n", figure.name, percentile(values, 50),
           percentile(values, 99), percentile(values, 100));
  }

  auto baseP99 = spread(column(baseline, &Measurement::p99Micros)).median;
  auto swapP99 = spread(column(swapping, &Measurement::p99Micros)).median;
  auto baseP50 = spread(column(baseline, &Measurement::p50Micros)).median;
  auto swapP50 = spread(column(swapping, &Measurement::p50Micros)).median;
  auto baseCps = spread(column(baseline, &Measurement::callsPerSecond)).median;
  auto swapCps = spread(column(swapping, &Measurement::callsPerSecond)).median;
  double p99Ratio = baseP99 > 0 ? swapP99 / baseP99 : 0;
  double p50Ratio = baseP50 > 0 ? swapP50 / baseP50 : 0;
  double cpsRatio = baseCps > 0 ? swapCps / baseCps : 0;
  auto p99Rounds = spread(ratios(swapping, baseline, &Measurement::p99Micros));
  auto cpsRounds = spread(ratios(swapping, baseline, &Measurement::callsPerSecond));
  auto switches = column(swaps, &SwapRecord::switchMs);
  double switchP99 = percentile(switches, 99);
  printf("\nratios, swaps / baseline (of medians; per-round range in parentheses)\n");
  printf("  p99      %.2fx (%.2f-%.2f)  target <= 2x: %s\n", p99Ratio, p99Rounds.min, p99Rounds.max,
         p99Ratio <= 2 ? "met" : "MISSED");
  printf("  p50      %.2fx\n", p50Ratio);
  printf("  calls/s  %.2fx (%.2f-%.2f)\n", cpsRatio, cpsRounds.min, cpsRounds.max);
  printf("  switch   p50 %.3f ms, p99 %.3f ms vs the 10 ms target: %s (%.0fx under at p99)\n",
         percentile(switches, 50), switchP99,
         !switches.empty() && switchP99 <= 10 ? "met" : "MISSED",
         switchP99 > 0 ? 10 / switchP99 : 0);
  printf(
      "\npayhostd before -> after the run: mappings %zu -> %zu, plugin libraries mapped %zu -> "
      "%zu, fds %zu -> %zu, RSS %.1f -> %.1f MiB\n",
      figuresBefore.mappings, figuresAfter.mappings, figuresBefore.pluginMappings,
      figuresAfter.pluginMappings, figuresBefore.fds, figuresAfter.fds, figuresBefore.rss,
      figuresAfter.rss);

  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  pid = -1;
  bool cleanExit = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (WIFEXITED(status)) {
    printf("payhostd stopped with SIGTERM: exit status %d%s\n", WEXITSTATUS(status),
           cleanExit ? "" : "  <-- FAILED");
  } else {
    printf("payhostd stopped with SIGTERM: killed by signal %d  <-- FAILED\n",
           WIFSIGNALED(status) ? WTERMSIG(status) : -1);
  }
  {
    // At warning level every line is worth seeing.
    std::ifstream log(logPath.cStr());
    std::string line;
    int lines = 0;
    while (std::getline(log, line)) {
      if (lines++ < 20) printf("  payhostd log: %s\n", line.c_str());
    }
    printf("payhostd log: %d lines (%s)\n", lines, logPath.cStr());
  }

  if (!options.json.empty()) {
    std::ostringstream json;
    json << "{\n  \"benchmark\": \"swap\",\n  \"rounds\": " << options.rounds
         << ",\n  \"seconds\": " << options.seconds << ",\n  \"in_flight\": " << options.inFlight
         << ",\n  \"swap_interval_ms\": " << options.swapIntervalMs << ",\n";
    jsonCase(json, "baseline", baseline);
    jsonCase(json, "with_swaps", swapping);
    json << "  \"swaps_total\": " << swaps.size() << ", \"swaps_deployed\": " << deployedCount
         << ", \"old_unmapped\": " << unmappedCount << ", \"old_gone_at_return\": " << goneAtReturn
         << ", \"stale_answers\": " << tracker.staleAnswers
         << ", \"wrong_results\": " << tracker.wrongResults << ",\n";
    json << "  \"ratio_p99\": " << p99Ratio << ", \"ratio_p50\": " << p50Ratio
         << ", \"ratio_calls_per_s\": " << cpsRatio << ",\n  \"per_swap_percentiles\": {";
    const char* separator = "";
    for (auto& figure : figures) {
      auto values = column(swaps, figure.field);
      json << separator << "\"" << figure.key << "\": {\"p50\": " << percentile(values, 50)
           << ", \"p99\": " << percentile(values, 99) << ", \"max\": " << percentile(values, 100)
           << "}";
      separator = ", ";
    }
    json << "},\n  \"swaps\": [";
    separator = "";
    for (auto& swap : swaps) {
      json << separator << "\n    {\"number\": " << swap.number << ", \"round\": " << swap.round
           << ", \"to_version\": \"" << swap.toVersion << "\", \"outcome\": \"" << swap.outcome
           << "\", \"unload_result\": \"" << swap.unloadResult
           << "\", \"calls_drained\": " << swap.callsDrained << ", \"calls_cut\": " << swap.callsCut
           << ", \"map_checks\": " << swap.mapChecks;
      for (auto& figure : figures)
        json << ", \"" << figure.key << "\": " << swap.*(figure.field);
      json << "}";
      separator = ",";
    }
    json << "\n  ],\n  \"payhostd_exit_status\": " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1)
         << "\n}\n";
    std::ofstream(options.json) << json.str();
    printf("results written to %s\n", options.json.c_str());
  }

  bool ok = swapFailed == 0 && baselineFailed == 0 && deployedCount == swaps.size() &&
            unmappedCount == deployedCount && firstSeenCount == deployedCount &&
            tracker.staleAnswers == 0 && tracker.wrongResults == 0 && cleanExit;
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace payhost::bench

int main(int argc, char** argv) {
  CLI::App app{"payhost-swap-bench: hot swap under load beside the same load without swaps"};
  payhost::bench::Options options;
  app.add_option("--payhostd", options.payhostd, "path of payhostd")->required();
  app.add_option("--fixtures", options.fixtures, "directory with fixture-echo{,-v2,-v3}.so")
      ->required();
  app.add_option("--rounds", options.rounds, "interleaved rounds per case")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--seconds", options.seconds, "seconds per measurement")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--in-flight", options.inFlight, "calls in flight on the one connection")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--swap-interval-ms", options.swapIntervalMs, "time between deploys")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--json", options.json, "write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  try {
    return payhost::bench::runBenchmark(options);
  } catch (const kj::Exception& e) {
    fprintf(stderr, "payhost-swap-bench: %s\n", e.getDescription().cStr());
    return 1;
  }
}
