// payhostctl: the operator's command line for a running payhostd, over its admin socket.

#include <payhost/host.capnp.h>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>

namespace {

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
    }
    return 0;
  } catch (const kj::Exception& e) {
    fprintf(stderr, "payhostctl: %s: %s\n", socket.c_str(), e.getDescription().cStr());
    return 1;
  }
}
