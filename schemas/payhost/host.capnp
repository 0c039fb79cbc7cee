@0xfa3abe1fb47bbbc7;
# The host's own interfaces: the `Gateway` that clients bootstrap on the data plane, and the
# `Admin` interface served on the admin unix socket to `payhostctl`.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("payhost::schema");

struct ServiceInfo {
  name @0 :Text;
  # e.g. "payments.card".
  interfaceName @1 :Text;
  # The Cap'n Proto interface's name, e.g. "CardProcessor".
  interfaceId @2 :UInt64;
  plugin @3 :Text;
  version @4 :Text;
  # The semantic version of the plugin currently serving the service.
}

interface Gateway {
  # The bootstrap capability of every data-plane listener.
  listServices @0 () -> (services :List(ServiceInfo));
  getService @1 (name :Text) -> (service :Capability);
  # Fails with a clear error when no loaded plugin provides `name`. Cast the result to the
  # interface named in `listServices`.
}

enum PluginState {
  unspecified @0;
  loading @1;
  serving @2;
  draining @3;
  failed @4;
}

struct PluginInfo {
  name @0 :Text;
  version @1 :Text;
  path @2 :Text;
  # The package file it was loaded from.
  sha256 @3 :Text;
  # Of the bytes loaded.
  services @4 :List(Text);
  state @5 :PluginState;
  generation @6 :UInt64;
  loadedAtUnixMs @7 :Int64;
  error @8 :Text;
  # Why the plugin failed to load, when `state` is `failed`.
  callsTotal @9 :UInt64;
  callsFailed @10 :UInt64;
  callsInFlight @11 :UInt32;
}

enum HostState {
  unspecified @0;
  starting @1;
  serving @2;
  draining @3;
}

struct HostStatus {
  version @0 :Text;
  pid @1 :UInt32;
  uptimeMs @2 :UInt64;
  shards @3 :UInt32;
  state @4 :HostState;
  connectionsOpen @5 :UInt32;
  callsInFlight @6 :UInt32;
  callsTotal @7 :UInt64;
  callsFailed @8 :UInt64;
  pluginsServing @9 :UInt32;
  pluginsFailed @10 :UInt32;
  listeners @11 :List(Text);
  # Bound addresses, with the real port when the config asked for port 0.
  metricsAddress @12 :Text;
  # Where /metrics, /healthz and /readyz are served ("127.0.0.1:PORT"); empty without [metrics].
}

struct DeployRequest {
  path @0 :Text;
  # The plugin package (a .so built with payhost_add_plugin) as a path on the daemon's host.
  canaryPercent @1 :UInt8;
  # 0: switch every call to the new version once it is ready. 1-99: route that share of new
  # calls to it, then promote or roll back on the canary thresholds of the daemon's config.
  config @2 :Text;
  # The new version's config table as TOML text; empty keeps the running version's table.
  drainTimeoutMs @3 :UInt32;
  # How long calls in flight on the old version may take; 0 means the daemon's default.
  force @4 :Bool;
  # Deploy even when the package's version is older than the running one (a downgrade), which
  # is refused otherwise.
}

enum DeployOutcome {
  unspecified @0;
  deployed @1;
  # The new version serves every call; the old one has drained and been unloaded.
  refused @2;
  # Nothing changed: the old version (if any) keeps serving. `error` says why.
  canaryPromoted @3;
  canaryRolledBack @4;
  # The canary failed its thresholds and was removed; the old version serves every call.
}

struct DeployReport {
  outcome @0 :DeployOutcome;
  plugin @1 :Text;
  fromVersion @2 :Text;
  # Empty when the plugin was not running before.
  toVersion @3 :Text;
  generation @4 :UInt64;
  error @5 :Text;
  loadMicros @6 :UInt64;
  # Reading, checking and loading the package and creating an instance on every shard.
  switchMicros @7 :UInt64;
  # From the new version being ready on every shard to every shard routing to it.
  drainMicros @8 :UInt64;
  # From the switch to the last call on the old version finishing (or the deadline).
  callsDrained @9 :UInt64;
  # Calls that were in flight on the old version at the switch and finished there.
  callsCut @10 :UInt64;
  # Calls still in flight at the drain deadline; they failed with "service was replaced".
  unloadResult @11 :Text;
  # "unmapped", "still-mapped" or "parked" (its objects did not go; kept loaded, reported).
  stateBytes @12 :UInt64;
  # Size of the state handed from the old version to the new one (0: none).
  canaryDetail @13 :Text;
  # The figures behind a canary decision.
}

struct AuditEntry {
  sequence @0 :UInt64;
  timeUnixMs @1 :Int64;
  action @2 :Text;
  # deploy, refuse, rollback, promote, canary-rollback, unload, load, load-refused,
  # admin.<method>, auth-failed, permission-denied, config-reload, key-reload, start, stop.
  plugin @3 :Text;
  fromVersion @4 :Text;
  toVersion @5 :Text;
  package @6 :Text;
  # The package file kept in the daemon's data directory.
  detail @7 :Text;
  previousHash @8 :Text;
  hash @9 :Text;
  # Hex SHA-256 over `previousHash` and this entry written with `hash` empty: each entry seals
  # the one before it, so an edited, removed or reordered entry breaks the chain.
  actor @10 :Text;
  # Who: "uid=1000 pid=4242" for an admin-socket peer (SO_PEERCRED), "payhostd" for the daemon's
  # own actions, or a client identity. Absent in entries written before it existed.
  outcome @11 :Text;
  # "ok", "refused" or "failed". Absent in entries written before it existed.
}

interface Admin {
  list @0 () -> (plugins :List(PluginInfo));
  status @1 () -> (status :HostStatus);
  deploy @2 (request :DeployRequest) -> (report :DeployReport);
  # Loads the package beside the running version of the same plugin (by name), checks it,
  # starts it on every shard, runs its readiness check, hands over state, switches the route,
  # drains the old version and unloads it. Returns when that is done (or refused).
  rollback @3 (service :Text) -> (report :DeployReport);
  # Deploys the package that served `service` before the current one.
  history @4 (limit :UInt32) -> (entries :List(AuditEntry));
  # The newest `limit` entries of the audit log (0: all), oldest first.
}
