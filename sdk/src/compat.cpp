#include <payhost/compat.h>
#include <payhost/fingerprint.h>

#include <cstddef>
#include <cstring>

namespace payhost {

namespace {

// Reads a C string from a plugin's descriptor without trusting its length.
kj::StringPtr boundedString(const char* text, size_t limit) {
  if (text == nullptr) return nullptr;
  size_t n = strnlen(text, limit + 1);
  if (n > limit) return nullptr;
  return kj::StringPtr(text, n);
}

constexpr size_t MAX_NAME = 128;
constexpr size_t MAX_FINGERPRINT = 512;
constexpr size_t MAX_SERVICES = 64;

}  // namespace

kj::StringPtr sdkFingerprint() {
  return PAYHOST_BUILD_FINGERPRINT;
}

bool isValidName(kj::StringPtr name) {
  if (name.size() == 0 || name.size() > MAX_NAME) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (i == 0 ? !alnum : !(alnum || c == '.' || c == '-' || c == '_')) return false;
  }
  return true;
}

bool isValidVersion(kj::StringPtr version) {
  if (version.size() == 0 || version.size() > 64) return false;
  int parts = 0;
  size_t digits = 0;
  for (size_t i = 0; i < version.size(); ++i) {
    char c = version[i];
    if (c >= '0' && c <= '9') {
      ++digits;
    } else if (c == '.' && digits > 0 && parts < 2) {
      ++parts;
      digits = 0;
    } else if (c == '-' && digits > 0 && parts == 2) {
      // A pre-release suffix, as in semver: ASCII letters, digits, '.' and '-'.
      if (i + 1 == version.size()) return false;
      for (size_t j = i + 1; j < version.size(); ++j) {
        char p = version[j];
        bool alnum = (p >= '0' && p <= '9') || (p >= 'a' && p <= 'z') || (p >= 'A' && p <= 'Z');
        if (!alnum && p != '.' && p != '-') return false;
      }
      return true;
    } else {
      return false;
    }
  }
  return parts == 2 && digits > 0;
}

kj::Maybe<kj::String> describeIncompatibility(const payhost_plugin_v1_descriptor& plugin) {
  constexpr size_t V1_SIZE =
      offsetof(payhost_plugin_v1_descriptor, live_objects) + sizeof(plugin.live_objects);
  if (plugin.struct_size < V1_SIZE) {
    return kj::str("descriptor too small: plugin ", plugin.struct_size, " bytes, host needs ",
                   V1_SIZE);
  }
  if (plugin.abi_major != PAYHOST_ABI_MAJOR || plugin.abi_minor > PAYHOST_ABI_MINOR) {
    return kj::str("SDK ABI mismatch: plugin built against SDK ABI ", plugin.abi_major, ".",
                   plugin.abi_minor, ", host supports ", PAYHOST_ABI_MAJOR, ".0 to ",
                   PAYHOST_ABI_MAJOR, ".", PAYHOST_ABI_MINOR);
  }
  auto fingerprint = boundedString(plugin.fingerprint, MAX_FINGERPRINT);
  if (fingerprint != sdkFingerprint()) {
    return kj::str("build fingerprint mismatch: plugin '",
                   fingerprint == nullptr ? kj::StringPtr("<missing>") : fingerprint, "', host '",
                   sdkFingerprint(), "'");
  }
  auto name = boundedString(plugin.name, MAX_NAME);
  if (name == nullptr || !isValidName(name)) {
    return kj::str("invalid plugin name: expected 1-128 characters of [a-z0-9._-]");
  }
  auto version = boundedString(plugin.version, 64);
  if (version == nullptr || !isValidVersion(version)) {
    return kj::str("plugin ", name, " has an invalid version: expected MAJOR.MINOR.PATCH");
  }
  if (plugin.service_count == 0 || plugin.service_count > MAX_SERVICES ||
      plugin.services == nullptr) {
    return kj::str("plugin ", name, " declares ", plugin.service_count, " services; expected 1 to ",
                   MAX_SERVICES);
  }
  for (size_t i = 0; i < plugin.service_count; ++i) {
    auto service = boundedString(plugin.services[i].name, MAX_NAME);
    if (service == nullptr || !isValidName(service)) {
      return kj::str("plugin ", name, " declares an invalid service name at index ", i);
    }
    if (boundedString(plugin.services[i].interface_name, 256) == nullptr) {
      return kj::str("plugin ", name, " service ", service, " has no interface name");
    }
  }
  if (plugin.create == nullptr || plugin.destroy == nullptr || plugin.live_objects == nullptr) {
    return kj::str("plugin ", name, " descriptor lacks its create/destroy/live_objects functions");
  }
  return nullptr;
}

}  // namespace payhost
