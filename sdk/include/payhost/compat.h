// Checking a plugin's descriptor before trusting anything else in it.
//
// Used by the host and by the test host: a plugin is usable only when its descriptor is large
// enough, its SDK ABI major equals ours with a minor no newer than ours, its build fingerprint
// equals ours exactly, and its name, version and service names are well formed.

#ifndef PAYHOST_COMPAT_H_
#define PAYHOST_COMPAT_H_

#include <payhost/abi.h>

#include <kj/string.h>

namespace payhost {

// The fingerprint of the code that calls this (the SDK library's build).
kj::StringPtr sdkFingerprint();

// Null when `plugin` may be loaded by a host built like this SDK; otherwise one message that
// names what is wrong with both sides of any mismatch, e.g.
// "build fingerprint mismatch: plugin 'compiler=clang-14 ...', host 'compiler=gcc-12 ...'".
kj::Maybe<kj::String> describeIncompatibility(const payhost_plugin_v1_descriptor& plugin);

// Whether `name` is a valid plugin or service name: 1-128 bytes of [a-z0-9._-], starting with a
// letter or digit.
bool isValidName(kj::StringPtr name);

// Whether `version` is a semantic version "MAJOR.MINOR.PATCH" with an optional "-pre" suffix.
bool isValidVersion(kj::StringPtr version);

}  // namespace payhost

#endif  // PAYHOST_COMPAT_H_
