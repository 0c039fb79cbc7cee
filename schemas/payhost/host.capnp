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
}

interface Admin {
  list @0 () -> (plugins :List(PluginInfo));
  status @1 () -> (status :HostStatus);
}
