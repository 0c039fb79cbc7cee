// payhostd itself: loads the configured plugins into every shard, serves the Gateway on the
// configured listeners and Admin on the admin socket, and on SIGTERM or SIGINT drains calls in
// flight, closes connections, destroys plugin instances and unloads their libraries.
//
// The daemon is handed its config, log and control-thread event loop; `payhostd.cpp` only parses
// arguments and wires these together, so tests can run a Daemon in process too.
//
// Control thread only (the thread that owns `io`). SIGTERM and SIGINT (and SIGHUP, which reloads
// the `[tls]` files for new handshakes) must have been captured with
// `io.unixEventPort.captureSignal()` before any thread was started.

#pragma once

#include "host/config/daemon-config.h"
#include "host/log/logger.h"

#include <kj/async-io.h>

namespace payhost::host {

class Daemon {
public:
  Daemon(const DaemonConfig& config, LogSink& log, kj::AsyncIoContext& io);
  ~Daemon() noexcept(false);
  KJ_DISALLOW_COPY(Daemon);

  // Serves until SIGTERM or SIGINT (or `stopForTest()`), then shuts down in order. Returns the
  // process exit code: 0 after a clean drain, 1 when the host could not start (no listener
  // could be opened).
  int run();

  // Starts the same shutdown a SIGTERM would.
  void stopForTest();

  class Impl;

private:
  kj::Own<Impl> impl;
};

// payhostd's version, e.g. "0.1.0".
kj::StringPtr payhostVersion();

}  // namespace payhost::host
