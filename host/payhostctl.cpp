// payhostctl: the operator's command line for a running payhostd, over its admin socket.

#include <payhost/host.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <CLI/CLI.hpp>
#include <climits>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>

namespace {

// Reads a whole file for --config; a missing file is an error naming it.
kj::String readAllText(const char* path) {
  std::ifstream in(path);
  KJ_REQUIRE(in.good(), "cannot read the config file", path);
  std::stringstream text;
  text << in.rdbuf();
  return kj::heapString(text.str().c_str());
}

using payhost::schema::Admin;
using payhost::schema::HostState;
using payhost::schema::PluginState;

const char* stateName(PluginState state) {
  switch (state) {
    case PluginState::LOADING:
      return "loading";
    case PluginState::SERVING:
      return "serving";
    case PluginState::DRAINING:
      return "draining";
    case PluginState::FAILED:
      return "failed";
    default:
      return "unspecified";
  }
}

const char* hostStateName(HostState state) {
  switch (state) {
    case HostState::STARTING:
      return "starting";
    case HostState::SERVING:
      return "serving";
    case HostState::DRAINING:
      return "draining";
    default:
      return "unspecified";
  }
}

void printList(Admin::ListResults::Reader results) {
  printf("%-20s %-10s %-10s %-4s %-28s %12s %8s\n", "PLUGIN", "VERSION", "STATE", "GEN", "SERVICES",
         "CALLS", "FAILED");
  for (auto plugin : results.getPlugins()) {
    kj::Vector<kj::StringPtr> services;
    for (auto service : plugin.getServices())
      services.add(service);
    auto name = plugin.getName().size() > 0 ? plugin.getName() : kj::StringPtr("-");
    printf("%-20s %-10s %-10s %-4llu %-28s %12llu %8llu\n", name.cStr(),
           plugin.getVersion().size() > 0 ? plugin.getVersion().cStr() : "-",
           stateName(plugin.getState()), (unsigned long long)plugin.getGeneration(),
           kj::strArray(services, ",").cStr(), (unsigned long long)plugin.getCallsTotal(),
           (unsigned long long)plugin.getCallsFailed());
    if (plugin.getState() == PluginState::FAILED) {
      printf("  %s\n  error: %s\n", plugin.getPath().cStr(), plugin.getError().cStr());
    }
  }
}

void printStatus(payhost::schema::HostStatus::Reader status) {
  printf("payhostd %s  pid %u  state %s  uptime %.1fs\n", status.getVersion().cStr(),
         status.getPid(), hostStateName(status.getState()), status.getUptimeMs() / 1000.0);
  printf("shards %u  connections %u  calls in flight %u  total %llu  failed %llu\n",
         status.getShards(), status.getConnectionsOpen(), status.getCallsInFlight(),
         (unsigned long long)status.getCallsTotal(), (unsigned long long)status.getCallsFailed());
  printf("plugins serving %u  failed %u\n", status.getPluginsServing(), status.getPluginsFailed());
  for (auto listener : status.getListeners())
    printf("listening on %s\n", listener.cStr());
  if (status.getMetricsAddress().size() > 0) {
    printf("metrics on http://%s/metrics\n", status.getMetricsAddress().cStr());
  }
}

const char* outcomeName(payhost::schema::DeployOutcome outcome) {
  using O = payhost::schema::DeployOutcome;
  switch (outcome) {
    case O::DEPLOYED:
      return "deployed";
    case O::REFUSED:
      return "refused";
    case O::CANARY_PROMOTED:
      return "canary promoted";
    case O::CANARY_ROLLED_BACK:
      return "canary rolled back";
    default:
      return "unspecified";
  }
}

// Prints a deploy report; returns the exit code (0 deployed or promoted, 1 otherwise).
int printReport(payhost::schema::DeployReport::Reader report) {
  using O = payhost::schema::DeployOutcome;
  auto from = report.getFromVersion().size() > 0 ? report.getFromVersion().cStr() : "(none)";
  printf("%s: %s %s -> %s\n", outcomeName(report.getOutcome()), report.getPlugin().cStr(), from,
         report.getToVersion().cStr());
  if (report.getOutcome() == O::REFUSED) {
    printf("  %s\n  the running version (if any) keeps serving\n", report.getError().cStr());
    return 1;
  }
  printf("  generation %llu  load %.2f ms  switch %.3f ms  drain %.1f ms\n",
         (unsigned long long)report.getGeneration(), report.getLoadMicros() / 1000.0,
         report.getSwitchMicros() / 1000.0, report.getDrainMicros() / 1000.0);
  printf("  calls drained %llu  cut %llu  state handed over %llu bytes  old version %s\n",
         (unsigned long long)report.getCallsDrained(), (unsigned long long)report.getCallsCut(),
         (unsigned long long)report.getStateBytes(), report.getUnloadResult().cStr());
  if (report.getCanaryDetail().size() > 0) {
    printf("  canary: %s\n", report.getCanaryDetail().cStr());
  }
  return report.getOutcome() == O::DEPLOYED || report.getOutcome() == O::CANARY_PROMOTED ? 0 : 1;
}

void printHistory(capnp::List<payhost::schema::AuditEntry>::Reader entries) {
  printf("%-5s %-24s %-16s %-16s %-10s %-10s %s\n", "SEQ", "TIME (UTC)", "ACTION", "PLUGIN", "FROM",
         "TO", "DETAIL");
  for (auto entry : entries) {
    time_t seconds = entry.getTimeUnixMs() / 1000;
    tm parts;
    gmtime_r(&seconds, &parts);
    char when[32];
    strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &parts);
    printf("%-5llu %-24s %-16s %-16s %-10s %-10s %s\n", (unsigned long long)entry.getSequence(),
           when, entry.getAction().cStr(), entry.getPlugin().cStr(),
           entry.getFromVersion().size() ? entry.getFromVersion().cStr() : "-",
           entry.getToVersion().size() ? entry.getToVersion().cStr() : "-",
           entry.getDetail().cStr());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"payhostctl: control a running payhostd"};
  const char* fromEnv = getenv("PAYHOST_ADMIN_SOCKET");
  std::string socket = fromEnv != nullptr ? fromEnv : "/run/payhost/admin.sock";
  app.add_option("-s,--socket", socket, "payhostd's admin socket (env PAYHOST_ADMIN_SOCKET)")
      ->capture_default_str();
  app.require_subcommand(1);
  auto list = app.add_subcommand("list", "List plugins, their versions, services and state");
  auto status = app.add_subcommand("status", "Show the host's state and call figures");
  std::string package, canary, configFile;
  uint32_t drainMs = 0;
  auto deploy = app.add_subcommand("deploy", "Deploy a plugin package under load (hot swap)");
  deploy->add_option("package", package, "the plugin .so (a path on the daemon's machine)")
      ->required();
  deploy->add_option("--canary", canary, "route this share of new calls first, e.g. 10%");
  deploy->add_option("--config", configFile, "TOML file with the new version's config table");
  deploy->add_option("--drain-ms", drainMs, "drain deadline for the old version's calls");
  std::string service;
  auto rollback = app.add_subcommand("rollback", "Go back to the previous version of a service");
  rollback->add_option("service", service, "a service of the plugin, e.g. payments.card")
      ->required();
  uint32_t limit = 50;
  auto history = app.add_subcommand("history", "Deploys, promotions, rollbacks and refusals");
  history->add_option("-n,--limit", limit, "newest entries to show (0: all)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    auto io = kj::setupAsyncIo();
    auto address =
        io.provider->getNetwork().parseAddress(kj::str("unix:", socket.c_str())).wait(io.waitScope);
    auto connection = address->connect().wait(io.waitScope);
    capnp::TwoPartyClient client(*connection);
    auto admin = client.bootstrap().castAs<Admin>();
    if (list->parsed()) {
      printList(admin.listRequest().send().wait(io.waitScope));
    } else if (status->parsed()) {
      printStatus(admin.statusRequest().send().wait(io.waitScope).getStatus());
    } else if (deploy->parsed()) {
      auto request = admin.deployRequest();
      auto body = request.initRequest();
      char absolute[PATH_MAX];
      body.setPath(realpath(package.c_str(), absolute) != nullptr ? absolute : package.c_str());
      if (!canary.empty()) {
        auto percent = atoi(canary.c_str());
        if (percent < 1 || percent > 99) {
          fprintf(stderr, "payhostctl: --canary takes a share from 1%% to 99%%, not '%s'\n",
                  canary.c_str());
          return 2;
        }
        body.setCanaryPercent(percent);
      }
      if (!configFile.empty()) {
        auto text = readAllText(configFile.c_str());
        body.setConfig(text);
      }
      body.setDrainTimeoutMs(drainMs);
      return printReport(request.send().wait(io.waitScope).getReport());
    } else if (rollback->parsed()) {
      auto request = admin.rollbackRequest();
      request.setService(service);
      return printReport(request.send().wait(io.waitScope).getReport());
    } else if (history->parsed()) {
      auto request = admin.historyRequest();
      request.setLimit(limit);
      printHistory(request.send().wait(io.waitScope).getEntries());
    }
    return 0;
  } catch (const kj::Exception& e) {
    fprintf(stderr, "payhostctl: %s: %s\n", socket.c_str(), e.getDescription().cStr());
    return 1;
  }
}
