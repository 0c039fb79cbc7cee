// The plugin door: the C-layout descriptor every payhost plugin exports.
//
// A plugin exports exactly one symbol, `payhost_plugin_v1` (through `PAYHOST_PLUGIN`, which uses
// `BOOST_DLL_ALIAS`): a pointer to a function returning a `payhost_plugin_v1_descriptor`. The
// layout is plain C so that a host can read it, and refuse the plugin with a message naming both
// sides, even when the plugin was built by another toolchain or against another SDK.
//
// Rules for this header:
//   - New fields go only at the end; `struct_size` tells the reader which fields exist.
//   - Everything pointed to lives in the plugin's read-only data and is valid while the library
//     is loaded; the host copies what it keeps before it can unload the library.
//   - Only after `abi_major` and `fingerprint` match may the host call `create`.
//
// Thread-safety: the descriptor is immutable; `create` and `destroy` may be called from any
// thread, once per instance.

#ifndef PAYHOST_ABI_H_
#define PAYHOST_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The SDK ABI version. A host accepts a plugin with the same major and a minor no greater than
// its own (a newer plugin may rely on host features this host lacks).
// Minor 1: `Context::callerOf` (behind `Context::caller`) at the end of `Context`'s vtable.
#define PAYHOST_ABI_MAJOR 1
#define PAYHOST_ABI_MINOR 1

// The name of the exported alias. Versioned: an incompatible door gets a new name.
#define PAYHOST_ENTRY_SYMBOL "payhost_plugin_v1"

// One service a plugin provides.
typedef struct payhost_service_v1 {
  // The service's name in the host's registry, e.g. "payments.card". Lower-case letters,
  // digits, '.', '-' and '_', at most 128 bytes.
  const char* name;
  // The Cap'n Proto interface's display name, e.g. "payhost/payments.capnp:CardProcessor".
  const char* interface_name;
  // The Cap'n Proto interface id (`capnp::typeId<Interface>()`).
  uint64_t interface_id;
} payhost_service_v1;

// Written by `create` on failure: a NUL-terminated message, truncated to fit.
typedef struct payhost_error_v1 {
  char* message;
  size_t capacity;
} payhost_error_v1;

typedef struct payhost_plugin_v1_descriptor {
  // sizeof(payhost_plugin_v1_descriptor) as the plugin was compiled. Fields beyond it are absent.
  uint32_t struct_size;
  uint16_t abi_major;
  uint16_t abi_minor;
  // The build fingerprint: compiler, C++ standard library ABI, Cap'n Proto version, SDK ABI.
  // Plugin and host must agree exactly, since services cross the door as C++ Cap'n Proto objects.
  const char* fingerprint;
  // The plugin's name (same charset as a service name) and semantic version ("1.4.0").
  const char* name;
  const char* version;
  const payhost_service_v1* services;
  size_t service_count;
  // Creates one instance of the plugin for one shard. `context` is a `payhost::Context*` owned
  // by the host that outlives the instance. Returns a `payhost::Plugin*` to be released with
  // `destroy`, or NULL after writing the reason to `error`. Never throws.
  void* (*create)(void* context, payhost_error_v1* error);
  void (*destroy)(void* instance);
  // How many objects created by this library are still alive (instances, services, calls in
  // progress). The host closes the library only once this reaches 0.
  uint64_t (*live_objects)(void);
} payhost_plugin_v1_descriptor;

typedef const payhost_plugin_v1_descriptor* (*payhost_plugin_v1_entry)(void);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // PAYHOST_ABI_H_
