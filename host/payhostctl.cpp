// payhostctl: the operator's command line for a running payhostd, over its admin socket, and
// the offline commands around it: signing keys and plugin signatures, and audit log checks.

#include "host/admin/audit-log.h"
#include "host/config/daemon-config.h"
#include "host/loader/package-signature.h"

#include <payhost/host.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <CLI/CLI.hpp>
#include <climits>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iterator>
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
  bool force = false;
  deploy->add_flag("--force", force, "deploy even an older version than the running one");
  uint32_t limit = 50;
  auto history = app.add_subcommand("history", "Deploys, promotions, rollbacks and refusals");
  history->add_option("-n,--limit", limit, "newest entries to show (0: all)")
      ->capture_default_str();

  std::string keyPrefix;
  auto keygen = app.add_subcommand(
      "keygen", "Make an Ed25519 plugin signing key: PREFIX.key (private, 0600) and PREFIX.pub");
  keygen->add_option("prefix", keyPrefix, "e.g. /etc/payhost/keys/release")->required();
  std::string signKey, signPlugin, signName, signVersion, signOut;
  auto sign = app.add_subcommand("sign", "Sign a plugin: writes PLUGIN.sig beside it");
  sign->add_option("plugin", signPlugin, "the plugin .so")->required();
  sign->add_option("--key", signKey, "the private key from payhostctl keygen")->required();
  sign->add_option("--name", signName, "the plugin's name (as in its PAYHOST_PLUGIN line)")
      ->required();
  sign->add_option("--version", signVersion, "the plugin's version (as in PAYHOST_PLUGIN)")
      ->required();
  sign->add_option("-o,--out", signOut, "where to write the signature (default PLUGIN.sig)");
  auto audit = app.add_subcommand("audit", "Check the audit log");
  audit->require_subcommand(1);
  std::string auditLog, auditConfig;
  auto verify = audit->add_subcommand(
      "verify", "Check the audit log's hash chain and head; name the first bad record");
  verify->add_option("--log", auditLog, "the audit log (data_dir/audit.log)");
  verify->add_option("-c,--config", auditConfig, "payhostd's config, to find its data_dir");
  CLI11_PARSE(app, argc, argv);

  try {
    if (keygen->parsed()) {
      auto pair = payhost::host::generateSigningKey();
      auto privatePath = kj::str(keyPrefix.c_str(), ".key");
      auto publicPath = kj::str(keyPrefix.c_str(), ".pub");
      payhost::host::writeSigningKey(pair, privatePath, publicPath);
      printf(
          "private key %s (mode 0600: keep it off the servers)\npublic key  %s (list it in "
          "[security] trusted_keys)\nkey %s\n",
          privatePath.cStr(), publicPath.cStr(),
          payhost::host::publicKeyHexOf(pair.publicPem).cStr());
      return 0;
    }
    if (sign->parsed()) {
      std::ifstream in(signPlugin, std::ios::binary);
      if (!in.good()) {
        fprintf(stderr, "payhostctl: %s: cannot read the plugin\n", signPlugin.c_str());
        return 1;
      }
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      auto text = payhost::host::signPackage(
          signKey.c_str(),
          kj::arrayPtr(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()),
          signName.c_str(), signVersion.c_str());
      auto out = signOut.empty() ? kj::str(signPlugin.c_str(), payhost::host::SIGNATURE_FILE_SUFFIX)
                                 : kj::str(signOut.c_str());
      std::ofstream file(out.cStr(), std::ios::binary | std::ios::trunc);
      file << text.cStr();
      file.close();
      if (!file.good()) {
        fprintf(stderr, "payhostctl: %s: cannot write the signature\n", out.cStr());
        return 1;
      }
      printf("signed %s %s: %s\n", signName.c_str(), signVersion.c_str(), out.cStr());
      return 0;
    }
    if (verify->parsed()) {
      kj::String path;
      if (!auditLog.empty()) {
        path = kj::str(auditLog.c_str());
      } else if (!auditConfig.empty()) {
        auto config = payhost::host::loadDaemonConfig(auditConfig.c_str(), 1);
        path = kj::str(config.dataDir, "/audit.log");
      } else {
        fprintf(stderr, "payhostctl: audit verify needs --log FILE or --config FILE\n");
        return 2;
      }
      if (access(path.cStr(), F_OK) != 0 &&
          access(payhost::host::AuditLog::headPath(path).cStr(), F_OK) != 0) {
        fprintf(stderr, "payhostctl: %s: no audit log there\n", path.cStr());
        return 1;
      }
      KJ_IF_MAYBE (problem, payhost::host::AuditLog::verify(path)) {
        printf("BROKEN: %s\n", problem->cStr());
        return 1;
      }
      auto head = payhost::host::AuditLog::headPath(path);
      printf("ok: %s: %llu records, hash chain intact%s\n", path.cStr(),
             (unsigned long long)payhost::host::AuditLog::countEntries(path),
             access(head.cStr(), F_OK) == 0 ? ", reaches the recorded head"
                                            : " (no head file: a cut tail would not show)");
      return 0;
    }

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
      body.setForce(force);
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
    if (keygen->parsed() || sign->parsed() || verify->parsed()) {
      fprintf(stderr, "payhostctl: %s\n", e.getDescription().cStr());
    } else {
      fprintf(stderr, "payhostctl: %s: %s\n", socket.c_str(), e.getDescription().cStr());
    }
    return 1;
  }
}
