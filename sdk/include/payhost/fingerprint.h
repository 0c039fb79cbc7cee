// The build fingerprint: what must match between a plugin and the host that loads it.
//
// Services cross the plugin door as C++ Cap'n Proto objects, so plugin and host must agree on
// the compiler family and major version, the C++ standard library and its ABI, and the exact
// Cap'n Proto release (generated code `#error`s on any other). `PAYHOST_BUILD_FINGERPRINT` is a
// string literal evaluated where it is expanded: in a plugin it describes the plugin's build, in
// the host the host's. The SDK ABI version is checked separately (see <payhost/abi.h>).

#ifndef PAYHOST_FINGERPRINT_H_
#define PAYHOST_FINGERPRINT_H_

#include <capnp/common.h>

#define PAYHOST_STRINGIFY_(x) #x
#define PAYHOST_STRINGIFY(x) PAYHOST_STRINGIFY_(x)

#if defined(__clang__)
#define PAYHOST_FINGERPRINT_COMPILER "clang-" PAYHOST_STRINGIFY(__clang_major__)
#elif defined(__GNUC__)
#define PAYHOST_FINGERPRINT_COMPILER "gcc-" PAYHOST_STRINGIFY(__GNUC__)
#else
#define PAYHOST_FINGERPRINT_COMPILER "unknown"
#endif

// <ciso646>-style probe: any standard header defines the library's identification macros.
#include <cstddef>
#if defined(_LIBCPP_VERSION)
#define PAYHOST_FINGERPRINT_STDLIB "libc++-abi" PAYHOST_STRINGIFY(_LIBCPP_ABI_VERSION)
#elif defined(_GLIBCXX_USE_CXX11_ABI) && _GLIBCXX_USE_CXX11_ABI
#define PAYHOST_FINGERPRINT_STDLIB "libstdc++-cxx11"
#elif defined(__GLIBCXX__)
#define PAYHOST_FINGERPRINT_STDLIB "libstdc++-cxx98"
#else
#define PAYHOST_FINGERPRINT_STDLIB "unknown"
#endif

#define PAYHOST_FINGERPRINT_CAPNP        \
  PAYHOST_STRINGIFY(CAPNP_VERSION_MAJOR) \
  "." PAYHOST_STRINGIFY(CAPNP_VERSION_MINOR) "." PAYHOST_STRINGIFY(CAPNP_VERSION_MICRO)

#define PAYHOST_BUILD_FINGERPRINT                                                \
  "compiler=" PAYHOST_FINGERPRINT_COMPILER " stdlib=" PAYHOST_FINGERPRINT_STDLIB \
  " capnp=" PAYHOST_FINGERPRINT_CAPNP

#endif  // PAYHOST_FINGERPRINT_H_
