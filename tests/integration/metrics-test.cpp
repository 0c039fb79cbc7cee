// The metrics endpoint, end to end: payhostd with the echo fixture and `[metrics]` on port 0,
// called over the gateway, then /metrics scraped over a real TCP connection with kj-http's
// client and parsed here, so the assertions are about what a Prometheus server would read.
// Also /healthz and /readyz through a drain, and [plugin.admission] refusing calls beyond its
// queue.
#include <kj/compat/http.h>

#include <gmock/gmock.h>

#include <signal.h>

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "daemon-process.h"

namespace payhost::test {
namespace {

using testing::HasSubstr;

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value;
};

// The text exposition format, strictly: HELP and TYPE comments, then `name{labels} value`
// lines with escaped label values. Fails the test on a line it cannot read.
struct Scrape {
  std::vector<Sample> samples;
  std::map<std::string, std::string> types;
  std::map<std::string, std::string> help;

  explicit Scrape(const std::string& text) {
    size_t start = 0;
    while (start < text.size()) {
      auto end = text.find('\n', start);
      EXPECT_NE(end, std::string::npos) << "the exposition must end with a newline";
      if (end == std::string::npos) end = text.size();
      parseLine(text.substr(start, end - start));
      start = end + 1;
    }
  }

  void parseLine(const std::string& line) {
    if (line.empty()) return;
    if (line.rfind("# HELP ", 0) == 0) {
      auto rest = line.substr(7);
      auto space = rest.find(' ');
      help[rest.substr(0, space)] = rest.substr(space + 1);
      return;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      auto rest = line.substr(7);
      auto space = rest.find(' ');
      types[rest.substr(0, space)] = rest.substr(space + 1);
      return;
    }
    ASSERT_NE(line[0], '#') << line;
    Sample sample;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ')
      ++i;
    sample.name = line.substr(0, i);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (line[i] != '}') {
        auto eq = line.find('=', i);
        ASSERT_NE(eq, std::string::npos) << line;
        auto name = line.substr(i, eq - i);
        ASSERT_EQ(line[eq + 1], '"') << line;
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\') {
            ++j;
            ASSERT_LT(j, line.size()) << line;
            value += line[j] == 'n' ? '\n' : line[j];
          } else {
            value += line[j];
          }
        }
        ASSERT_LT(j, line.size()) << "unterminated label value: " << line;
        sample.labels[name] = value;
        i = j + 1;
        if (line[i] == ',') ++i;
      }
      ++i;
    }
    ASSERT_EQ(line[i], ' ') << line;
    auto valueText = line.substr(i + 1);
    char* parsedEnd = nullptr;
    sample.value = valueText == "+Inf" ? HUGE_VAL : strtod(valueText.c_str(), &parsedEnd);
    if (valueText != "+Inf") {
      ASSERT_EQ(*parsedEnd, '\0') << line;
    }
    samples.push_back(kj::mv(sample));
  }

  // Samples named `name` whose labels include all of `labels`.
  std::vector<const Sample*> find(const std::string& name,
                                  std::map<std::string, std::string> labels = {}) const {
    std::vector<const Sample*> found;
    for (auto& sample : samples) {
      if (sample.name != name) continue;
      bool match = true;
      for (auto& [key, value] : labels) {
        auto it = sample.labels.find(key);
        match = match && it != sample.labels.end() && it->second == value;
      }
      if (match) found.push_back(&sample);
    }
    return found;
  }

  // The one sample named `name` with `labels`; fails the test (and returns NaN) otherwise.
  double value(const std::string& name, std::map<std::string, std::string> labels = {}) const {
    auto found = find(name, labels);
    EXPECT_EQ(found.size(), 1u) << name;
    return found.size() == 1 ? found[0]->value : std::nan("");
  }
};

struct HttpReply {
  unsigned status;
  std::string body;
};

class Metrics : public EndToEnd {
protected:
  ~Metrics() noexcept override {}

  kj::Own<DaemonProcess> start(kj::String plugins, uint32_t drainTimeoutMs = 10000,
                               kj::StringPtr extra = "") {
    DaemonOptions options;
    options.drainTimeoutMs = drainTimeoutMs;
    options.extra = kj::str("[metrics]\nlisten = \"127.0.0.1:0\"\n", extra);
    options.plugins = kj::mv(plugins);
    auto daemon = kj::heap<DaemonProcess>(kj::mv(options));
    auto line = daemon->waitForLog("event=metrics.open");
    metricsAddress = KJ_ASSERT_NONNULL(logField(line, "address"));
    return daemon;
  }

  HttpReply get(kj::StringPtr path) {
    auto address = await(io.provider->getNetwork().parseAddress(metricsAddress));
    auto client = kj::newHttpClient(io.provider->getTimer(), table, *address);
    kj::HttpHeaders headers(table);
    auto response = await(client->request(kj::HttpMethod::GET, path, headers).response);
    auto body = await(response.body->readAllText());
    return HttpReply{response.statusCode, s(body)};
  }

  Scrape scrape() {
    auto reply = get("/metrics");
    EXPECT_EQ(reply.status, 200u) << reply.body;
    return Scrape(reply.body);
  }

  kj::HttpHeaderTable table;
  kj::String metricsAddress;
};

std::string rulesOf(ScreenResponse&& response) {
  std::string joined;
  for (auto rule : response.getVerdict().getFiredRules())
    joined += std::string(joined.empty() ? "" : ",") + rule.cStr();
  return joined;
}

const std::map<std::string, std::string> SCREEN = {
    {"plugin", "echo"}, {"version", "1.0.0"}, {"service", "test.echo"}, {"method", "screen"}};

std::map<std::string, std::string> with(std::map<std::string, std::string> labels,
                                        const std::string& key, const std::string& value) {
  labels[key] = value;
  return labels;
}

TEST_F(Metrics, CountsCallsErrorsAndLatencyPerMethodAsPrometheusReadsThem) {
  auto daemon = start(echoPlugin("throw_token = \"bad\"\n"));
  Connection<schema::Gateway> connection(io, daemon->tcpAddress());
  auto echo = connection.echo();
  for (int i = 0; i < 5; ++i)
    await(screen(echo, "tok", i));
  for (int i = 0; i < 2; ++i) {
    auto failure = awaitFailure(screen(echo, "bad", i));
    EXPECT_EQ(typeOf(failure), "failed") << describe(failure);
  }

  auto metrics = scrape();
  EXPECT_EQ(metrics.types["payhost_calls_total"], "counter");
  EXPECT_EQ(metrics.types["payhost_call_errors_total"], "counter");
  EXPECT_EQ(metrics.types["payhost_call_duration_seconds"], "histogram");
  EXPECT_EQ(metrics.types["payhost_plugin_loaded"], "gauge");
  EXPECT_FALSE(metrics.help["payhost_calls_total"].empty());

  EXPECT_EQ(metrics.value("payhost_calls_total", SCREEN), 7);
  EXPECT_EQ(metrics.value("payhost_call_errors_total", with(SCREEN, "kind", "failed")), 2);
  for (auto kind : {"overloaded", "disconnected", "unimplemented"}) {
    EXPECT_EQ(metrics.value("payhost_call_errors_total", with(SCREEN, "kind", kind)), 0) << kind;
  }
  // The histogram: cumulative buckets ending in +Inf, which equals _count.
  auto buckets = metrics.find("payhost_call_duration_seconds_bucket", SCREEN);
  ASSERT_EQ(buckets.size(), 14u);
  double previous = 0, previousBound = 0;
  for (auto bucket : buckets) {
    auto le = bucket->labels.at("le");
    auto bound = le == "+Inf" ? HUGE_VAL : strtod(le.c_str(), nullptr);
    EXPECT_GT(bound, previousBound) << le;
    EXPECT_GE(bucket->value, previous) << le;
    previous = bucket->value;
    previousBound = bound;
  }
  EXPECT_EQ(buckets.back()->labels.at("le"), "+Inf");
  EXPECT_EQ(buckets.back()->value, 7);
  EXPECT_EQ(metrics.value("payhost_call_duration_seconds_count", SCREEN), 7);
  EXPECT_GT(metrics.value("payhost_call_duration_seconds_sum", SCREEN), 0);
  // Echo answers at once: every call well under 10 s.
  EXPECT_EQ(metrics.value("payhost_call_duration_seconds_bucket", with(SCREEN, "le", "10")), 7);

  auto loaded = metrics.find("payhost_plugin_loaded", {{"plugin", "echo"}, {"version", "1.0.0"}});
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0]->value, 1);
  EXPECT_FALSE(loaded[0]->labels.at("generation").empty());
  EXPECT_EQ(metrics.value("payhost_plugin_draining", {{"plugin", "echo"}}), 0);
  EXPECT_EQ(metrics.value("payhost_host_calls_total"), 7);
  EXPECT_EQ(metrics.value("payhost_host_calls_failed_total"), 2);
  EXPECT_EQ(metrics.value("payhost_calls_in_flight"), 0);
  EXPECT_EQ(metrics.value("payhost_connections_open"), 1);
  EXPECT_EQ(metrics.value("payhost_plugins", {{"state", "serving"}}), 1);
  EXPECT_EQ(metrics.value("payhost_draining"), 0);
  EXPECT_GE(metrics.value("payhost_workers_threads"), 1);
  EXPECT_EQ(metrics.value("payhost_workers_busy"), 0);
  metrics.value("payhost_workers_completed_total");
  metrics.value("payhost_workers_timeouts_total");

  // Admin status names the endpoint.
  Connection<schema::Admin> admin(io, daemon->adminAddress());
  EXPECT_EQ(s(status(admin).getStatus().getMetricsAddress()), s(metricsAddress));
  auto shown = runProcess({PAYHOSTCTL, "-s", daemon->adminSocket(), "status"});
  ASSERT_EQ(shown.exitCode, 0) << s(shown.err);
  EXPECT_THAT(s(shown.out),
              HasSubstr(kj::str("metrics on http://", metricsAddress, "/metrics\n").cStr()));
}

TEST_F(Metrics, ReadyzIsOkWhileServingAndUnavailableWhileDraining) {
  auto daemon = start(echoPlugin("slow_token = \"slow\"\nslow_ms = 1500\n"));
  auto health = get("/healthz");
  EXPECT_EQ(health.status, 200u);
  auto ready = get("/readyz");
  EXPECT_EQ(ready.status, 200u) << ready.body;

  Connection<schema::Gateway> connection(io, daemon->tcpAddress());
  auto echo = connection.echo();
  // Holds the drain open while /readyz is asked.
  auto slow = screen(echo, "slow", 1);
  Connection<schema::Admin> admin(io, daemon->adminAddress());
  waitForCallsInFlight(admin, 1);
  daemon->signal(SIGTERM);
  daemon->waitForLog("event=host.draining");

  auto draining = get("/readyz");
  EXPECT_EQ(draining.status, 503u);
  EXPECT_THAT(draining.body, HasSubstr("draining"));
  EXPECT_EQ(get("/healthz").status, 200u);
  auto metrics = scrape();
  EXPECT_EQ(metrics.value("payhost_draining"), 1);
  EXPECT_EQ(metrics.value("payhost_plugin_draining", {{"plugin", "echo"}}), 1);
  EXPECT_EQ(metrics.value("payhost_calls_in_flight"), 1);

  // The held call still finishes, then the daemon exits cleanly.
  auto answer = await(kj::mv(slow));
  expectEcho(answer, "slow", 1);
  EXPECT_EQ(daemon->waitForExit(STEP_TIMEOUT), 0);
}

TEST_F(Metrics, AdmissionRunsMaxConcurrentQueuesMaxQueuedAndRefusesTheRestAtOnce) {
  auto daemon = start(kj::str("[[plugin]]\npath = \"", fixture("fixture-echo.so"),
                              "\"\n[plugin.admission]\nmax_concurrent = 2\nmax_queued = 1\n"
                              "[plugin.config]\ndelay_ms = 300\n"));
  Connection<schema::Gateway> connection(io, daemon->tcpAddress());
  auto echo = connection.echo();
  // Resolve the service first, so the five calls below reach the route together.
  await(screen(echo, "warm", 0));

  struct Outcome {
    kj::Maybe<kj::Exception> failure;
    kj::Duration elapsed;
    int order;
  };
  int finished = 0;
  auto started = now();
  kj::Vector<kj::Promise<Outcome>> calls;
  for (int i = 0; i < 5; ++i) {
    // Evaluated eagerly, so each outcome is timed when it arrives.
    calls.add(screen(echo, "tok", i)
                  .then(
                      [&finished, started](ScreenResponse&&) {
                        return Outcome{nullptr, now() - started, finished++};
                      },
                      [&finished, started](kj::Exception&& e) {
                        return Outcome{kj::mv(e), now() - started, finished++};
                      })
                  .eagerlyEvaluate(nullptr));
  }
  auto outcomes = await(kj::joinPromises(calls.releaseAsArray()));
  int served = 0, refused = 0;
  for (auto& outcome : outcomes) {
    KJ_IF_MAYBE (e, outcome.failure) {
      ++refused;
      EXPECT_EQ(typeOf(*e), "overloaded") << describe(*e);
      EXPECT_THAT(s(e->getDescription()),
                  HasSubstr("plugin echo: admission queue full (2 running, 1 queued)"));
      // At once: before any admitted call (each takes 300 ms) has answered.
      EXPECT_LT(outcome.order, 2);
      EXPECT_LT(outcome.elapsed, 300 * kj::MILLISECONDS);
    } else {
      ++served;
      EXPECT_GE(outcome.order, 2);
    }
  }
  EXPECT_EQ(served, 3);
  EXPECT_EQ(refused, 2);

  auto metrics = scrape();
  EXPECT_EQ(metrics.value("payhost_calls_total", SCREEN), 6);
  EXPECT_EQ(metrics.value("payhost_call_errors_total", with(SCREEN, "kind", "overloaded")), 2);
  EXPECT_EQ(metrics.value("payhost_admission_rejected_total", {{"plugin", "echo"}}), 2);
  EXPECT_EQ(metrics.value("payhost_admission_queued", {{"plugin", "echo"}}), 0);
  EXPECT_EQ(metrics.value("payhost_host_calls_failed_total"), 2);
  // Refused calls are counted but not timed: the histogram holds the four admitted calls, of
  // 300 ms each, except the queued one, which waited for a turn first (at least 600 ms).
  EXPECT_EQ(metrics.value("payhost_call_duration_seconds_count", SCREEN), 4);
  EXPECT_EQ(metrics.value("payhost_call_duration_seconds_bucket", with(SCREEN, "le", "0.25")), 0);
  EXPECT_EQ(metrics.value("payhost_call_duration_seconds_bucket", with(SCREEN, "le", "0.5")), 3);

  // Turns came back: the plugin serves again.
  auto again = await(screen(echo, "again", 1));
  expectEcho(again, "again", 1);
}

TEST_F(Metrics, AdmissionCallCancelledWhileQueuedGivesUpItsPlace) {
  auto daemon = start(kj::str("[[plugin]]\npath = \"", fixture("fixture-echo.so"),
                              "\"\n[plugin.admission]\nmax_concurrent = 1\nmax_queued = 1\n"
                              "[plugin.config]\ndelay_ms = 300\n"));
  Connection<schema::Gateway> connection(io, daemon->tcpAddress());
  auto echo = connection.echo();
  Connection<schema::Admin> admin(io, daemon->adminAddress());
  auto running = screen(echo, "first", 1);
  {
    // Queued behind the first call (a waiting call counts as in flight), then cancelled.
    auto queued = screen(echo, "cancelled", 2);
    waitForCallsInFlight(admin, 2);
  }
  waitForCallsInFlight(admin, 1);
  // The cancelled call's place is free again: this one waits for its turn instead of failing.
  auto next = screen(echo, "next", 3);
  auto first = await(kj::mv(running));
  expectEcho(first, "first", 1);
  auto second = await(kj::mv(next));
  expectEcho(second, "next", 3);

  auto metrics = scrape();
  EXPECT_EQ(metrics.value("payhost_admission_rejected_total", {{"plugin", "echo"}}), 0);
  EXPECT_EQ(metrics.value("payhost_admission_queued", {{"plugin", "echo"}}), 0);
  EXPECT_EQ(metrics.value("payhost_calls_in_flight"), 0);
}

// A version replaced while it holds worker leases: one offload running in plugin code (it blocks
// the only worker for 1.5 s), one waiting for a lease. At unload the host takes back the waiting
// one, cannot stop the running one (the version is parked), and logs and counts both.
TEST_F(Metrics, LeasesHeldByAnUnloadedVersionAreReclaimedOrReportedAndCounted) {
  auto daemon = start(kj::str("[[plugin]]\npath = \"", fixture("fixture-resources.so"),
                              "\"\n[plugin.config]\nblock_ms = 1500\n"),
                      10000,
                      "[workers]\nmin_threads = 1\nmax_threads = 1\nlease_wait_ms = 5000\n"
                      "[deploy]\ndrain_timeout_ms = 50\nunload_timeout_ms = 200\n");
  Connection<schema::Gateway> client(io, daemon->tcpAddress());
  auto service = client.service("test.resources");
  auto running = screen(service, "block", 1).ignoreResult().then([]() {}, [](kj::Exception&&) {});
  auto waiting = screen(service, "block", 2).ignoreResult().then([]() {}, [](kj::Exception&&) {});
  auto deadline = io.provider->getTimer().now() + STEP_TIMEOUT;
  for (;;) {
    auto metrics = scrape();
    if (metrics.value("payhost_workers_busy") == 1 && metrics.value("payhost_workers_waiting") == 1)
      break;
    ASSERT_LT(io.provider->getTimer().now(), deadline)
        << "the two offloads never took their places";
    await(io.provider->getTimer().afterDelay(5 * kj::MILLISECONDS));
  }

  Connection<schema::Admin> admin(io, daemon->adminAddress());
  auto request = admin.client.deployRequest();
  request.initRequest().setPath(fixture("fixture-resources.so"));
  auto response = await(request.send(), 30 * kj::SECONDS);
  auto report = response.getReport();
  EXPECT_EQ(report.getOutcome(), schema::DeployOutcome::DEPLOYED);
  // The running offload is in plugin code that cannot be stopped: the old version stays loaded.
  EXPECT_EQ(s(report.getUnloadResult()), "parked");

  auto line = daemon->waitForLog("event=lease.leaked");
  EXPECT_THAT(s(line), HasSubstr("plugin=resources"));
  EXPECT_THAT(s(line), HasSubstr("version=1.0.0"));
  EXPECT_THAT(s(line), HasSubstr("pool=workers"));
  EXPECT_THAT(s(line), HasSubstr("count=2"));
  EXPECT_THAT(s(line), HasSubstr("reclaimed=1"));
  EXPECT_THAT(s(line), HasSubstr("held=1"));
  auto metrics = scrape();
  EXPECT_EQ(metrics.value("payhost_leases_leaked_total",
                          {{"plugin", "resources"}, {"pool", "workers"}, {"outcome", "reclaimed"}}),
            1);
  EXPECT_EQ(metrics.value("payhost_leases_leaked_total",
                          {{"plugin", "resources"}, {"pool", "workers"}, {"outcome", "held"}}),
            1);
  EXPECT_EQ(
      metrics.value("payhost_plugin_versions", {{"plugin", "resources"}, {"state", "parked"}}), 1);
  EXPECT_EQ(
      metrics.value("payhost_plugin_versions", {{"plugin", "resources"}, {"state", "active"}}), 1);
  // The reclaimed request's work never ran; the lease it waited for serves the new version.
  await(kj::mv(running));
  await(kj::mv(waiting));
  auto after = await(screen(service, "offload", 4));
  EXPECT_EQ(after.getVerdict().getScore(), 8u);
  EXPECT_EQ(scrape().value("payhost_workers_completed_total"), 2);
}

// A replaced version with a call in flight drains; a scrape during the drain shows it beside the
// active one, and one after it shows it gone.
TEST_F(Metrics, AVersionStillDrainingIsVisiblePerPlugin) {
  auto daemon = start(kj::str("[[plugin]]\npath = \"", fixture("fixture-resources.so"),
                              "\"\n[plugin.config]\nblock_ms = 700\n"),
                      10000, "[deploy]\ndrain_timeout_ms = 5000\n");
  auto versions = [this](const char* state) {
    return scrape().value("payhost_plugin_versions", {{"plugin", "resources"}, {"state", state}});
  };
  EXPECT_EQ(versions("active"), 1);
  EXPECT_EQ(versions("draining"), 0);
  Connection<schema::Gateway> client(io, daemon->tcpAddress());
  auto service = client.service("test.resources");
  auto inFlight = screen(service, "block", 1);
  Connection<schema::Admin> admin(io, daemon->adminAddress());
  waitForCallsInFlight(admin, 1);
  auto request = admin.client.deployRequest();
  request.initRequest().setPath(fixture("fixture-resources.so"));
  auto deploying = request.send();
  auto deadline = io.provider->getTimer().now() + STEP_TIMEOUT;
  while (versions("draining") != 1) {
    ASSERT_LT(io.provider->getTimer().now(), deadline) << "the old version never showed draining";
    await(io.provider->getTimer().afterDelay(5 * kj::MILLISECONDS));
  }
  EXPECT_EQ(versions("active"), 1);
  EXPECT_EQ(versions("parked"), 0);
  // The call finishes on the old version, which then unloads.
  EXPECT_EQ(rulesOf(await(kj::mv(inFlight))), "blocked");
  auto response = await(kj::mv(deploying), 30 * kj::SECONDS);
  EXPECT_EQ(s(response.getReport().getUnloadResult()), "unmapped");
  EXPECT_EQ(versions("draining"), 0);
  EXPECT_EQ(versions("active"), 1);
  EXPECT_EQ(versions("parked"), 0);
}

}  // namespace
}  // namespace payhost::test
