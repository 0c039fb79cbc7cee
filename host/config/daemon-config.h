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
  // `[plugin.quota] remote_calls_reserve / remote_calls_limit`: its calls in flight to each
  // `[remotes.NAME]`, per shard: reserved out of the remote's max_calls_in_flight / at most (0:
  // none / no limit beyond the remote's).
  uint32_t remoteCallsReserve = 0;
  uint32_t remoteCallsLimit = 0;
  // `[plugin.admission] max_concurrent / max_queued`, per shard: calls beyond `max_concurrent`
  // (0: no limit) wait in a FIFO of `max_queued`; beyond that they fail OVERLOADED at once.
  uint32_t admissionMaxConcurrent = 0;
  uint32_t admissionMaxQueued = 0;
};

enum class DatabaseDriver { SQLITE, POSTGRESQL };

// [databases.NAME] driver = "sqlite" | "postgresql", path = "..." (sqlite; default
// "<data_dir>/NAME.sqlite"), conninfo = "..." (postgresql, required), min_connections,
// max_connections, lease_wait_ms, scale, grow_after_ms, idle_ms.
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
  // Scaling between min and max on observed waits (see host/pools/sql-pool.h).
  bool scale = false;
  kj::Duration growAfter = 20 * kj::MILLISECONDS;
  kj::Duration idleTimeout = 30 * kj::SECONDS;
};

// [remotes.NAME] tls = { ... }: this host as a TLS client of a remote payhostd.
struct RemoteTls {
  // PEM file of the CAs the remote's server certificate must chain to.
  kj::String ca;
  // This host's client certificate (PEM chain, leaf first) and its private key (mode 0600 or
  // 0400; refused when others may read it).
  kj::String certificate;
  kj::String privateKey;
  // The name the remote's certificate must carry (DNS subjectAltName or CN); sent as SNI.
  // Default: the host of a "tcp:host:port" address; required for a unix address.
  kj::String serverName;
};

// [remotes.NAME]: another payhostd whose services this host's plugins reach through
// `Context::service`. See host/config/README.md.
struct RemoteEntry {
  kj::String name;
  // "tcp:host:port" or "unix:/absolute/path" (a relative unix path is resolved against the config
  // file's directory).
  kj::String address;
  // The service names that resolve to this remote; each names at most one remote.
  kj::Vector<kj::String> services;
  // Connections each shard keeps open to the remote (opened on the first call, then reused).
  uint32_t connectionsPerShard = 1;
  kj::Duration connectTimeout = 1 * kj::SECONDS;
  // A call that has no answer within this fails OVERLOADED naming the remote.
  kj::Duration callTimeout = 5 * kj::SECONDS;
  // Calls in flight to the remote per shard; beyond, calls fail OVERLOADED at once (0: no limit).
  uint32_t maxCallsInFlight = 1024;
  // After a lost connection or a failed connect, wait from `backoffMin`, doubling up to
  // `backoffMax`, before connecting again; calls meanwhile fail DISCONNECTED at once.
  kj::Duration backoffMin = 100 * kj::MILLISECONDS;
  kj::Duration backoffMax = 5 * kj::SECONDS;
  // `tls = { ca, certificate, private_key, server_name }`: the connection is TLS 1.2+; this host
  // presents `certificate` (so the remote's mutual TLS and `[[access]]` see this host's identity)
  // and verifies the remote's certificate against `ca` and `serverName`. Null only when
  // `insecure` is true (plaintext, loopback or unix addresses only, a warning at every start).
  kj::Maybe<RemoteTls> tls;
  bool insecure = false;
  // TCP keepalive: a connection whose peer has been silent (no ACK of a keepalive probe or of
  // data sent) for about this long is dropped and reconnected, instead of every call on it
  // waiting `callTimeout`. Zero: off (the kernel's defaults, i.e. hours).
  kj::Duration keepalive = 15 * kj::SECONDS;
};

struct KeyEntry {
  kj::String name;
  KeyType type;
  // Absolute path of the key file.
  kj::String file;
};

// One data-plane listener (`[listen] tcp = [...]` or `unix = [...]`). An element is an address
// string (TLS, from `[tls]`), or a table `{ address = "127.0.0.1:7400", insecure = true,
// identity = "dev" }` (`path` instead of `address` for unix): plaintext, allowed only on loopback
// addresses and unix sockets, logged as a warning at every start. Calls over an insecure listener
// are made by `identity` (default "anonymous"), which `[[access]]` must grant like any other.
struct Listener {
  // "host:port" for TCP, the absolute socket path for unix.
  kj::String address;
  bool insecure = false;
  kj::String identity;
};

// Where a TLS client's identity comes from (`[tls] identity`).
enum class ClientIdentity {
  // The subject's common name (CN); "cn", the default.
  COMMON_NAME,
  // The first URI subjectAltName, e.g. "spiffe://example.org/merchant-a"; "san-uri".
  SAN_URI,
  // The first DNS subjectAltName, e.g. "merchant-a.clients.example.org"; "san-dns".
  SAN_DNS,
};

// "cn", "san-uri" or "san-dns": the config's spelling of `source`.
kj::StringPtr identitySourceName(ClientIdentity source);

// [tls]: the certificate every TLS listener presents and the CA its clients' certificates must
// chain to. Read (and the key file's mode checked) when payhostd starts and on SIGHUP.
struct TlsConfig {
  // PEM certificate chain (leaf first) and its PEM private key (mode 0600 or 0400).
  kj::String certificate;
  kj::String privateKey;
  // PEM file of the CAs that issue client certificates (required unless client certificates
  // are not required).
  kj::String clientCa;
  // Mutual TLS (default): a client without a certificate from `clientCa` is refused during the
  // handshake. False: clients without a certificate are served as "anonymous".
  bool requireClientCertificate = true;
  // `identity = "cn" | "san-uri" | "san-dns"`: which field of the client certificate is the
  // caller's identity (what `[[access]]` rules and `Context::caller` name). A certificate without
  // that field (or with an unprintable one) is refused during the handshake.
  ClientIdentity identity = ClientIdentity::COMMON_NAME;
};

// [[access]] identity = "merchant-a", services = ["payments.card"], methods = ["authorize"]:
// which callers may call what. Default deny: a call is served only when some entry names its
// caller's identity, its service (or "*") and its method (or has no `methods`, or "*").
struct AccessRule {
  kj::String identity;
  kj::Vector<kj::String> services;
  // Empty: every method of those services.
  kj::Vector<kj::String> methods;
};

// [limits]: bounds on what one client can make the host do. Every violation fails that call or
// closes that connection; the host keeps serving everyone else.
struct LimitsConfig {
  // Largest message a client may send; a bigger one closes its connection (Cap'n Proto checks
  // the size announced by the segment table before reading the message).
  uint64_t maxMessageBytes = 1 << 20;
  // Cap'n Proto reader limits (library defaults: 8 Mi words, 64 levels). The traversal limit is
  // also what bounds the message size, so the smaller of the two is used.
  uint64_t traversalLimitWords = 1 << 17;
  uint32_t nestingLimit = 16;
  // Client connections open at once, host-wide; further connections are closed at accept.
  uint32_t maxConnections = 1024;
  // Calls one connection may have in flight; a further call fails OVERLOADED.
  uint32_t maxCallsPerConnection = 256;
  // A TLS handshake not done by then closes the connection.
  kj::Duration handshakeTimeout = 5 * kj::SECONDS;
  // A connection with no call in flight and none made for this long is closed (0: never).
  kj::Duration idleTimeout = 300 * kj::SECONDS;
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
  kj::Vector<Listener> tcp;
  // Absolute socket paths.
  kj::Vector<Listener> unix;

  // [tls]: required when any listener is not `insecure`.
  kj::Maybe<TlsConfig> tls;
  // [[access]], in file order.
  kj::Vector<AccessRule> access;
  // [limits]
  LimitsConfig limits;

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

  // [remotes.NAME], in file order.
  kj::Vector<RemoteEntry> remotes;

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
