// A plugin's configuration: the `[plugin.config]` table of the host's TOML config file.
//
// Keys are dotted paths into nested tables ("issuer.latency_ms"). Typed getters throw a
// `kj::Exception` naming the key and the expected and actual types when a value has the wrong
// type; `tryX()` returns null only when the key is absent. Defaults belong to the caller.
//
// Thread-safety: immutable after construction; any thread may read it.

#ifndef PAYHOST_CONFIG_H_
#define PAYHOST_CONFIG_H_

#include <kj/array.h>
#include <kj/common.h>
#include <kj/memory.h>
#include <kj/string.h>

#include <cstdint>

namespace payhost {

class Config {
public:
  // An empty config: every key is absent.
  Config();
  ~Config() noexcept;
  Config(Config&&) noexcept;
  Config& operator=(Config&&) noexcept;
  KJ_DISALLOW_COPY(Config);

  // Parses TOML text. `sourceName` names the text in error messages (a file name, or "<test>").
  // Throws a `kj::Exception` with the line and column of the first syntax error.
  static Config parse(kj::StringPtr toml, kj::StringPtr sourceName);

  kj::Maybe<kj::String> tryString(kj::StringPtr key) const;
  kj::Maybe<int64_t> tryInteger(kj::StringPtr key) const;
  // Integers are accepted where a floating-point number is asked for.
  kj::Maybe<double> tryNumber(kj::StringPtr key) const;
  kj::Maybe<bool> tryBoolean(kj::StringPtr key) const;

  kj::String string(kj::StringPtr key, kj::StringPtr defaultValue) const;
  int64_t integer(kj::StringPtr key, int64_t defaultValue) const;
  double number(kj::StringPtr key, double defaultValue) const;
  bool boolean(kj::StringPtr key, bool defaultValue) const;

  // The sub-table at `key` (empty when absent). Throws when `key` is not a table.
  Config section(kj::StringPtr key) const;

  // The keys of the top-level table, in file order.
  kj::Array<kj::String> keys() const;

  // The whole table as TOML text; `parse(toToml())` gives an equal config.
  kj::String toToml() const;

  class Impl;

private:
  explicit Config(kj::Own<const Impl> impl);
  kj::Own<const Impl> impl;
};

}  // namespace payhost

#endif  // PAYHOST_CONFIG_H_
