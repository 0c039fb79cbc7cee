// payhostd: parses arguments and wires the daemon together; everything else is in `Daemon`.

#include "host/config/daemon-config.h"
#include "host/daemon.h"
#include "host/log/logger.h"

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>

#include <CLI/CLI.hpp>

#include <signal.h>
#include <unistd.h>

#include <cstdio>

int main(int argc, char** argv) {
  using namespace payhost;
  using namespace payhost::host;

  CLI::App app{"payhostd: the payhost plugin host daemon"};
  std::string configPath;
  bool checkOnly = false;
  app.add_option("-c,--config", configPath, "TOML config file")->required();
  app.add_flag("--check", checkOnly, "Check the config file and exit");
  app.set_version_flag("--version", std::string(payhostVersion().cStr()));
  CLI11_PARSE(app, argc, argv);

  try {
    auto cpus = sysconf(_SC_NPROCESSORS_ONLN);
    auto config = loadDaemonConfig(configPath.c_str(), cpus > 0 ? cpus : 1);
    if (checkOnly) {
      fprintf(stdout, "%s: ok (%zu plugins, %u shards)\n", config.sourcePath.cStr(),
              config.plugins.size(), config.shards);
      return 0;
    }
    auto level = KJ_ASSERT_NONNULL(tryParseLogLevel(config.logLevel));
    LogSink log(level, config.logFormat);
    auto io = kj::setupAsyncIo();
    io.unixEventPort.captureSignal(SIGTERM);
    io.unixEventPort.captureSignal(SIGINT);
    // SIGHUP reloads the TLS certificate, key and client CA.
    io.unixEventPort.captureSignal(SIGHUP);
    signal(SIGPIPE, SIG_IGN);
    Daemon daemon(config, log, io);
    return daemon.run();
  } catch (const kj::Exception& e) {
    fprintf(stderr, "payhostd: %s\n", e.getDescription().cStr());
    return 2;
  }
}
