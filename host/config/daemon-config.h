// payhostd's configuration: the TOML file named by `payhostd --config FILE`, parsed and checked.
//
// Every key is known: an unknown key, a value of the wrong type or out of range, or a missing
// required key is refused with one message naming the file, line, column and dotted key, e.g.
//   "etc/payhostd.toml:7:1: host.shardz: unknown key (known: shards, log_level, ...)".
// Relative paths are resolved against the directory of the config file.
//
// Immutable after parsing.

#pragma once

#include <payhost/config.h>
#include <payhost/keys.h>

#include <kj/string.h>
#include <kj/time.h>
#include <kj/vector.h>

#include <cstdint>

namespace payhost::host {

enum class LogFormat { LOGFMT, JSON };

struct PluginConfig {
  // Absolute path of the plugin file.
  kj::String path;
  // Whether to load it (default true); a disabled plugin is listed but not loaded.
  bool enabled = true;
  // The plugin's own `[plugin.config]` table, handed to it as `Context::config()`.
  Config config;
  // Names of `[keys.NAME]` this plugin may use (`keys = ["vault"]`).
  kj::Vector<kj::String> keys;
  // `[plugin.quota] workers_reserve / workers_limit`: its share of the worker pool (0: none / no
  // limit beyond the pool).
  uint32_t workersReserve = 0;
  uint32_t workersLimit = 0;
  // Names of `[databases.NAME]` this plugin may use (`databases = ["ledger"]`).
  kj::Vector<kj::String> databases;
  // `[plugin.quota] databases_reserve / databases_limit`: its connections in each granted
  // database pool (0: none / no limit beyond the pool).
  uint32_t databasesReserve = 0;
  uint32_t databasesLimit = 0;
  // `[plugin.admission] max_concurrent / max_queued`, per shard: calls beyond `max_concurrent`
  // (0: no limit) wait in a FIFO of `max_queued`; beyond that they fail OVERLOADED at once.
  uint32_t admissionMaxConcurrent = 0;
  uint32_t admissionMaxQueued = 0;
};

enum class DatabaseDriver { SQLITE, POSTGRESQL };

// [databases.NAME] driver = "sqlite" | "postgresql", path = "..." (sqlite; default
// "<data_dir>/NAME.sqlite"), conninfo = "..." (postgresql, required), min_connections,
// max_connections, lease_wait_ms.
struct DatabaseEntry {
  kj::String name;
  DatabaseDriver driver = DatabaseDriver::SQLITE;
  // SQLite: absolute path of the database file.
  kj::String path;
  // PostgreSQL: the libpq connection string.
  kj::String conninfo;
  uint32_t minConnections = 0;
  uint32_t maxConnections = 4;
  kj::Duration leaseWait = 100 * kj::MILLISECONDS;
};

struct KeyEntry {
  kj::String name;
  KeyType type;
  // Absolute path of the key file.
  kj::String file;
};

struct DaemonConfig {
  // The file it was read from (absolute).
  kj::String sourcePath;

  // [host]
  // Event loops (shards); 0 in the file means one per core, resolved here with the core count.
  uint32_t shards = 1;
  // "debug", "info", "warning" or "error".
  kj::String logLevel = kj::heapString("info");
  LogFormat logFormat = LogFormat::LOGFMT;
  // How long SIGTERM waits for calls in flight before closing connections.
  kj::Duration drainTimeout = 10 * kj::SECONDS;

  // [listen]: data-plane listeners serving the Gateway. At least one TCP or unix address.
  // "host:port" (port 0 picks a free port; IPv6 as "[::1]:7400").
  kj::Vector<kj::String> tcp;
  // Absolute socket paths.
  kj::Vector<kj::String> unix;

  // Where payhostd keeps what must survive a restart: the audit log and a copy of every plugin
  // package it loaded (for rollback). Default: "payhost-data" beside the config file.
  kj::String dataDir;

  // [deploy]: hot swap.
  // How long calls in flight on a replaced version may take before they are cut.
  kj::Duration deployDrainTimeout = 5 * kj::SECONDS;
  // How long a new version's readiness check may take before the deploy is refused.
  kj::Duration readyTimeout = 10 * kj::SECONDS;
  // How long to wait for a replaced version's objects to go before its library is parked.
  kj::Duration unloadTimeout = 2 * kj::SECONDS;
  // A canary is judged after this window, on at least `canaryMinCalls` calls (the window is
  // extended up to four times to gather them): rolled back when its error rate is above
  // `canaryMaxErrorRate` or its p99 latency above `canaryMaxP99`, promoted otherwise.
  kj::Duration canaryWindow = 10 * kj::SECONDS;
  uint32_t canaryMinCalls = 50;
  double canaryMaxErrorRate = 0.01;
  kj::Duration canaryMaxP99 = 250 * kj::MILLISECONDS;

  // [workers]: the worker pool behind Context::offload.
  uint32_t workersMin = 2;
  uint32_t workersMax = 8;
  kj::Duration workersLeaseWait = 100 * kj::MILLISECONDS;
  kj::Duration workersScaleInterval = 1 * kj::SECONDS;

  // [keys.NAME] type = "ed25519" | "aes-256-gcm" | "hmac-sha256", file = "..."
  kj::Vector<KeyEntry> keys;

  // [databases.NAME], in file order.
  kj::Vector<DatabaseEntry> databases;

  // [metrics] listen = "127.0.0.1:9400": the Prometheus endpoint (/metrics, /healthz, /readyz).
  // Empty: no metrics listener. Port 0 picks a free port.
  kj::String metricsListen;

  // [admin]
  // Absolute path of the admin unix socket (required).
  kj::String adminSocket;
  // `group = "payhost-admin"`: the socket is given to this group with mode 0660, so its members
  // may administer payhostd. Empty: mode 0600, the daemon's user only.
  kj::String adminGroup;

  // [security]
  // `trusted_keys = ["release.pub", ...]`: absolute paths of the PEM Ed25519 public keys whose
  // plugin signatures payhostd accepts (written by `payhostctl keygen`).
  kj::Vector<kj::String> trustedKeys;
  // `allow_unsigned = true`: development only. Plugins without a signature file are loaded, with
  // a warning logged at each load. A signature file that is present is still checked.
  bool allowUnsigned = false;

  // [[plugin]], in file order.
  kj::Vector<PluginConfig> plugins;
};

// Parses `text` as the config file at `path` (used for messages and for resolving relative
// paths). `cpuCount` resolves `shards = 0`. Throws a kj::Exception with one clear message.
DaemonConfig parseDaemonConfig(kj::StringPtr text, kj::StringPtr path, uint32_t cpuCount);

// Reads and parses the file at `path`. A missing or unreadable file is an error naming it.
DaemonConfig loadDaemonConfig(kj::StringPtr path, uint32_t cpuCount);

}  // namespace payhost::host
