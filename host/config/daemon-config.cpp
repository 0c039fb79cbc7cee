#include "host/config/daemon-config.h"

#include <payhost/log.h>

#include <kj/debug.h>
#include <kj/io.h>

#include <toml++/toml.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <sstream>
#include <string_view>
#include <system_error>
#include <utility>

namespace payhost::host {
namespace {

namespace fs = std::filesystem;

constexpr int64_t MAX_SHARDS = 256;
constexpr int64_t MAX_DRAIN_TIMEOUT_MS = 600000;
constexpr int64_t MAX_PORT = 65535;
constexpr int64_t MIN_KEEPALIVE_MS = 1000;
constexpr int64_t MAX_KEEPALIVE_MS = 3600000;

kj::String toKj(std::string_view text) {
  return kj::heapString(text.data(), text.size());
}
std::string_view toStd(kj::StringPtr text) {
  return std::string_view(text.begin(), text.size());
}

// With its article, so messages read "expected an integer, got a string".
kj::StringPtr typeName(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

struct Entry {
  const toml::key* key;
  const toml::node* value;
};

// toml++ keeps a table's keys sorted by name; walking them in file order makes the error a user
// sees the first one in the file, as a compiler would report it.
kj::Array<Entry> inFileOrder(const toml::table& table) {
  auto builder = kj::heapArrayBuilder<Entry>(table.size());
  for (auto& [key, value] : table) {
    builder.add(Entry{&key, &value});
  }
  auto entries = builder.finish();
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    auto& x = a.key->source().begin;
    auto& y = b.key->source().begin;
    return x.line != y.line ? x.line < y.line : x.column < y.column;
  });
  return entries;
}

// "host:port", or "[v6]:port". Only the shape is checked here; whether the host resolves is
// for the listener to find out.
enum class HostPort { OK, MALFORMED, PORT_OUT_OF_RANGE };

HostPort checkHostPort(std::string_view address, int64_t& port) {
  std::string_view host, portText;
  if (address.starts_with('[')) {
    auto close = address.find(']');
    if (close == std::string_view::npos || close + 1 >= address.size() ||
        address[close + 1] != ':') {
      return HostPort::MALFORMED;
    }
    host = address.substr(1, close - 1);
    portText = address.substr(close + 2);
  } else {
    auto colon = address.rfind(':');
    if (colon == std::string_view::npos) return HostPort::MALFORMED;
    host = address.substr(0, colon);
    portText = address.substr(colon + 1);
    // An unbracketed IPv6 address is ambiguous ("::1:7400"), so it is refused, not guessed.
    if (host.find(':') != std::string_view::npos) return HostPort::MALFORMED;
  }
  if (host.empty() || host.find_first_of(" \t[]") != std::string_view::npos) {
    return HostPort::MALFORMED;
  }
  // More than five digits cannot be a port, and the bound keeps the sum below from overflowing.
  if (portText.empty() || portText.size() > 5) return HostPort::MALFORMED;
  port = 0;
  for (char c : portText) {
    if (c < '0' || c > '9') return HostPort::MALFORMED;
    port = port * 10 + (c - '0');
  }
  return port > MAX_PORT ? HostPort::PORT_OUT_OF_RANGE : HostPort::OK;
}

// Walks a parsed document against the schema. Each check fails with one message that names the
// file, the position and the dotted key, because that is all an operator needs to fix it.
class Parser {
public:
  Parser(kj::StringPtr file, fs::path dir, uint32_t cpuCount)
      : file(file), dir(kj::mv(dir)), cpuCount(cpuCount) {}

  void parse(const toml::table& root, DaemonConfig& config) {
    bool haveListen = false;
    bool haveAdmin = false;
    for (auto& entry : inFileOrder(root)) {
      auto name = toKj(entry.key->str());
      if (name == "host") {
        parseHost(expectTable(*entry.value, name), config);
      } else if (name == "listen") {
        parseListen(expectTable(*entry.value, name), config);
        haveListen = true;
      } else if (name == "admin") {
        parseAdmin(expectTable(*entry.value, name), config);
        haveAdmin = true;
      } else if (name == "plugin") {
        parsePlugins(*entry.value, config);
      } else if (name == "deploy") {
        parseDeploy(expectTable(*entry.value, name), config);
      } else if (name == "workers") {
        parseWorkers(expectTable(*entry.value, name), config);
      } else if (name == "keys") {
        parseKeys(expectTable(*entry.value, name), config);
      } else if (name == "databases") {
        parseDatabases(expectTable(*entry.value, name), config);
      } else if (name == "metrics") {
        parseMetrics(expectTable(*entry.value, name), config);
      } else if (name == "security") {
        parseSecurity(expectTable(*entry.value, name), config);
      } else if (name == "remotes") {
        parseRemotes(expectTable(*entry.value, name), config);
      } else if (name == "tls") {
        parseTls(expectTable(*entry.value, name), config);
      } else if (name == "access") {
        parseAccess(*entry.value, config);
      } else if (name == "limits") {
        parseLimits(expectTable(*entry.value, name), config);
      } else {
        unknownKey(*entry.key, name,
                   "host, listen, tls, access, limits, admin, deploy, workers, keys, databases, "
                   "metrics, remotes, security, plugin");
      }
    }
    if (config.tls == nullptr) {
      for (auto* listeners : {&config.tcp, &config.unix}) {
        for (auto& listener : *listeners) {
          if (!listener.insecure) {
            fail(root.source().begin, "tls",
                 kj::str("listener ", listener.address,
                         " serves TLS but there is no [tls] table (certificate, private_key, "
                         "client_ca); a plaintext development listener needs insecure = true"));
          }
        }
      }
    }
    if (!haveListen) fail(root.source().begin, "listen", noListenAddress());
    if (!haveAdmin) fail(root.source().begin, "admin.socket", "missing required key");
    if (config.shards == 0) config.shards = cpuCount;
    if (config.dataDir.size() == 0) config.dataDir = toKj((dir / "payhost-data").native());
    for (auto& database : config.databases) {
      if (database.driver == DatabaseDriver::SQLITE && database.path.size() == 0) {
        database.path = kj::str(config.dataDir, "/", database.name, ".sqlite");
      }
    }
  }

private:
  kj::StringPtr file;
  fs::path dir;
  uint32_t cpuCount;

  [[noreturn]] void fail(const toml::source_position& where, kj::StringPtr key,
                         kj::StringPtr what) {
    // Nodes built without a position (the document root, implicit tables) report line 0.
    auto line = where.line == 0 ? 1 : where.line;
    auto column = where.column == 0 ? 1 : where.column;
    KJ_FAIL_REQUIRE(kj::str(file, ":", line, ":", column, ": ", key, ": ", what));
  }

  [[noreturn]] void unknownKey(const toml::key& key, kj::StringPtr path, kj::StringPtr known) {
    fail(key.source().begin, path, kj::str("unknown key (known: ", known, ")"));
  }

  [[noreturn]] void wrongType(const toml::node& node, kj::StringPtr path, kj::StringPtr expected) {
    fail(node.source().begin, path, kj::str("expected ", expected, ", got ", typeName(node)));
  }

  static kj::StringPtr noListenAddress() { return "at least one tcp or unix address is required"; }

  const toml::table& expectTable(const toml::node& node, kj::StringPtr path) {
    auto table = node.as_table();
    if (table == nullptr) wrongType(node, path, "a table");
    return *table;
  }

  const toml::array& expectArray(const toml::node& node, kj::StringPtr path) {
    auto array = node.as_array();
    if (array == nullptr) wrongType(node, path, "an array");
    return *array;
  }

  std::string_view expectString(const toml::node& node, kj::StringPtr path) {
    auto value = node.as_string();
    if (value == nullptr) wrongType(node, path, "a string");
    return value->get();
  }

  bool expectBoolean(const toml::node& node, kj::StringPtr path) {
    auto value = node.as_boolean();
    if (value == nullptr) wrongType(node, path, "a boolean");
    return value->get();
  }

  int64_t expectInteger(const toml::node& node, kj::StringPtr path, int64_t min, int64_t max) {
    auto value = node.as_integer();
    if (value == nullptr) wrongType(node, path, "an integer");
    int64_t result = value->get();
    if (result < min || result > max) {
      fail(node.source().begin, path, kj::str(result, " is out of range ", min, "..", max));
    }
    return result;
  }

  // A path from the file, made absolute against the config file's directory so the daemon's
  // working directory never changes what a config means.
  kj::String expectPath(const toml::node& node, kj::StringPtr path) {
    auto text = expectString(node, path);
    if (text.empty()) fail(node.source().begin, path, "must not be empty");
    fs::path value(text);
    auto resolved =
        value.is_absolute() ? value.lexically_normal() : (dir / value).lexically_normal();
    return toKj(resolved.native());
  }

  void parseHost(const toml::table& table, DaemonConfig& config) {
    for (auto& entry : inFileOrder(table)) {
      auto& value = *entry.value;
      auto name = toKj(entry.key->str());
      auto path = kj::str("host.", name);
      if (name == "shards") {
        config.shards = static_cast<uint32_t>(expectInteger(value, path, 0, MAX_SHARDS));
      } else if (name == "log_level") {
        auto level = toKj(expectString(value, path));
        if (tryParseLogLevel(level) == nullptr) {
          fail(value.source().begin, path,
               kj::str("\"", level, "\" is not one of debug, info, warning, error"));
        }
        config.logLevel = kj::mv(level);
      } else if (name == "log_format") {
        auto format = expectString(value, path);
        if (format == "logfmt") {
          config.logFormat = LogFormat::LOGFMT;
        } else if (format == "json") {
          config.logFormat = LogFormat::JSON;
        } else {
          fail(value.source().begin, path,
               kj::str("\"", toKj(format), "\" is not one of logfmt, json"));
        }
      } else if (name == "drain_timeout_ms") {
        config.drainTimeout =
            expectInteger(value, path, 0, MAX_DRAIN_TIMEOUT_MS) * kj::MILLISECONDS;
      } else if (name == "data_dir") {
        config.dataDir = expectPath(value, path);
      } else {
        unknownKey(*entry.key, path, "shards, log_level, log_format, drain_timeout_ms, data_dir");
      }
    }
  }

  double expectNumber(const toml::node& node, kj::StringPtr path, double min, double max) {
    double result;
    if (auto integer = node.as_integer()) {
      result = static_cast<double>(integer->get());
    } else if (auto floating = node.as_floating_point()) {
      result = floating->get();
    } else {
      wrongType(node, path, "a number");
    }
    if (!(result >= min && result <= max)) {
      fail(node.source().begin, path, kj::str(result, " is out of range ", min, "..", max));
    }
    return result;
  }

  void parseWorkers(const toml::table& table, DaemonConfig& config) {
    for (auto& entry : inFileOrder(table)) {
      auto& value = *entry.value;
      auto name = toKj(entry.key->str());
      auto path = kj::str("workers.", name);
      if (name == "min_threads") {
        config.workersMin = static_cast<uint32_t>(expectInteger(value, path, 1, 1024));
      } else if (name == "max_threads") {
        config.workersMax = static_cast<uint32_t>(expectInteger(value, path, 1, 1024));
      } else if (name == "lease_wait_ms") {
        config.workersLeaseWait =
            expectInteger(value, path, 0, MAX_DRAIN_TIMEOUT_MS) * kj::MILLISECONDS;
      } else if (name == "scale_interval_ms") {
        config.workersScaleInterval =
            expectInteger(value, path, 10, MAX_DRAIN_TIMEOUT_MS) * kj::MILLISECONDS;
      } else {
        unknownKey(*entry.key, path, "min_threads, max_threads, lease_wait_ms, scale_interval_ms");
      }
    }
    if (config.workersMin > config.workersMax) {
      fail(table.source().begin, "workers",
           kj::str("min_threads (", config.workersMin, ") is above max_threads (",
                   config.workersMax, ")"));
    }
  }

  void parseKeys(const toml::table& table, DaemonConfig& config) {
    for (auto& entry : inFileOrder(table)) {
      auto name = toKj(entry.key->str());
      auto keyPath = kj::str("keys.", name);
      auto& keyTable = expectTable(*entry.value, keyPath);
      KeyEntry key{kj::mv(name), KeyType::ED25519, kj::String()};
      bool haveType = false;
      for (auto& field : inFileOrder(keyTable)) {
        auto fieldName = toKj(field.key->str());
        auto path = kj::str(keyPath, ".", fieldName);
        if (fieldName == "type") {
          auto type = expectString(*field.value, path);
          if (type == "ed25519") {
            key.type = KeyType::ED25519;
          } else if (type == "aes-256-gcm") {
            key.type = KeyType::AES_256_GCM;
          } else if (type == "hmac-sha256") {
            key.type = KeyType::HMAC_SHA256;
          } else {
            fail(field.value->source().begin, path,
                 kj::str("\"", toKj(type), "\" is not one of ed25519, aes-256-gcm, hmac-sha256"));
          }
          haveType = true;
        } else if (fieldName == "file") {
          key.file = expectPath(*field.value, path);
        } else {
          unknownKey(*field.key, path, "type, file");
        }
      }
      if (!haveType)
        fail(keyTable.source().begin, kj::str(keyPath, ".type"), "missing required key");
      if (key.file.size() == 0) {
        fail(keyTable.source().begin, kj::str(keyPath, ".file"), "missing required key");
      }
      config.keys.add(kj::mv(key));
    }
  }

  void parseDatabases(const toml::table& table, DaemonConfig& config) {
    for (auto& entry : inFileOrder(table)) {
      auto name = toKj(entry.key->str());
      auto databasePath = kj::str("databases.", name);
      auto& databaseTable = expectTable(*entry.value, databasePath);
      DatabaseEntry database;
      database.name = kj::mv(name);
      bool haveDriver = false;
      for (auto& field : inFileOrder(databaseTable)) {
        auto fieldName = toKj(field.key->str());
        auto path = kj::str(databasePath, ".", fieldName);
        auto& value = *field.value;
        if (fieldName == "driver") {
          auto driver = expectString(value, path);
          if (driver == "sqlite") {
            database.driver = DatabaseDriver::SQLITE;
          } else if (driver == "postgresql") {
            database.driver = DatabaseDriver::POSTGRESQL;
          } else {
            fail(value.source().begin, path,
                 kj::str("\"", toKj(driver), "\" is not one of sqlite, postgresql"));
          }
          haveDriver = true;
        } else if (fieldName == "path") {
          database.path = expectPath(value, path);
        } else if (fieldName == "conninfo") {
          database.conninfo = toKj(expectString(value, path));
        } else if (fieldName == "min_connections") {
          database.minConnections = static_cast<uint32_t>(expectInteger(value, path, 0, 1024));
        } else if (fieldName == "max_connections") {
          database.maxConnections = static_cast<uint32_t>(expectInteger(value, path, 1, 1024));
        } else if (fieldName == "lease_wait_ms") {
          database.leaseWait =
              expectInteger(value, path, 0, MAX_DRAIN_TIMEOUT_MS) * kj::MILLISECONDS;
        } else if (fieldName == "scale") {
          database.scale = expectBoolean(value, path);
        } else if (fieldName == "grow_after_ms") {
          database.growAfter =
              expectInteger(value, path, 1, MAX_DRAIN_TIMEOUT_MS) * kj::MILLISECONDS;
        } else if (fieldName == "idle_ms") {
          database.idleTimeout =
              expectInteger(value, path, 1, MAX_DRAIN_TIMEOUT_MS) * kj::MILLISECONDS;
        } else {
          unknownKey(*field.key, path,
                     "driver, path, conninfo, min_connections, max_connections, lease_wait_ms, "
                     "scale, grow_after_ms, idle_ms");
        }
      }
      if (!haveDriver) {
        fail(databaseTable.source().begin, kj::str(databasePath, ".driver"),
             "missing required key");
      }
      if (database.driver == DatabaseDriver::POSTGRESQL && database.conninfo.size() == 0) {
        fail(databaseTable.source().begin, kj::str(databasePath, ".conninfo"),
             "missing required key (driver = \"postgresql\")");
      }
      if (database.driver == DatabaseDriver::SQLITE && database.conninfo.size() > 0) {
        fail(databaseTable.source().begin, kj::str(databasePath, ".conninfo"),
             "only for driver = \"postgresql\"");
      }
      if (database.driver == DatabaseDriver::POSTGRESQL && database.path.size() > 0) {
        fail(databaseTable.source().begin, kj::str(databasePath, ".path"),
             "only for driver = \"sqlite\"");
      }
      if (database.minConnections > database.maxConnections) {
        fail(databaseTable.source().begin, databasePath,
             kj::str("min_connections (", database.minConnections, ") is above max_connections (",
                     database.maxConnections, ")"));
      }
      if (database.scale && database.growAfter >= database.leaseWait) {
        fail(databaseTable.source().begin, kj::str(databasePath, ".grow_after_ms"),
             kj::str("must be below lease_wait_ms (", database.leaseWait / kj::MILLISECONDS,
                     ") when scale = true: a lease would fail OVERLOADED before the pool grows"));
      }
      config.databases.add(kj::mv(database));
    }
  }

  void parseRemotes(const toml::table& table, DaemonConfig& config) {
    for (auto& entry : inFileOrder(table)) {
      auto name = toKj(entry.key->str());
      auto remotePath = kj::str("remotes.", name);
      auto& remoteTable = expectTable(*entry.value, remotePath);
      RemoteEntry remote;
      remote.name = kj::mv(name);
      bool haveServices = false;
      for (auto& field : inFileOrder(remoteTable)) {
        auto fieldName = toKj(field.key->str());
        auto path = kj::str(remotePath, ".", fieldName);
        auto& value = *field.value;
        auto millis = [&](int64_t min) {
          return expectInteger(value, path, min, MAX_DRAIN_TIMEOUT_MS) * kj::MILLISECONDS;
        };
        if (fieldName == "address") {
          remote.address = parseRemoteAddress(value, path);
        } else if (fieldName == "services") {
          auto& array = expectArray(value, path);
          for (size_t i = 0; i < array.size(); ++i) {
            auto& element = *array.get(i);
            auto elementPath = kj::str(path, "[", i, "]");
            auto service = toKj(expectString(element, elementPath));
            if (service.size() == 0) fail(element.source().begin, elementPath, "must not be empty");
            for (auto& other : config.remotes) {
              for (auto& taken : other.services) {
                if (taken == service) {
                  fail(element.source().begin, elementPath,
                       kj::str("service '", service, "' is already mapped to remote '", other.name,
                               "'; a service resolves to one remote"));
                }
              }
            }
            for (auto& taken : remote.services) {
              if (taken == service) {
                fail(element.source().begin, elementPath,
                     kj::str("service '", service, "' is listed twice"));
              }
            }
            remote.services.add(kj::mv(service));
          }
          haveServices = true;
        } else if (fieldName == "connections_per_shard") {
          remote.connectionsPerShard = static_cast<uint32_t>(expectInteger(value, path, 1, 64));
        } else if (fieldName == "connect_timeout_ms") {
          remote.connectTimeout = millis(1);
        } else if (fieldName == "call_timeout_ms") {
          remote.callTimeout = millis(1);
        } else if (fieldName == "max_calls_in_flight") {
          remote.maxCallsInFlight = static_cast<uint32_t>(expectInteger(value, path, 0, 1000000));
        } else if (fieldName == "backoff_min_ms") {
          remote.backoffMin = millis(1);
        } else if (fieldName == "backoff_max_ms") {
          remote.backoffMax = millis(1);
        } else if (fieldName == "tls") {
          remote.tls = parseRemoteTls(expectTable(value, path), path);
        } else if (fieldName == "insecure") {
          remote.insecure = expectBoolean(value, path);
        } else if (fieldName == "keepalive_ms") {
          auto ms = expectInteger(value, path, 0, MAX_KEEPALIVE_MS);
          if (ms > 0 && ms < MIN_KEEPALIVE_MS) {
            fail(value.source().begin, path,
                 kj::str(ms, " is below ", MIN_KEEPALIVE_MS,
                         " (the kernel counts keepalive in seconds); 0 turns it off"));
          }
          remote.keepalive = ms * kj::MILLISECONDS;
        } else {
          unknownKey(*field.key, path,
                     "address, services, connections_per_shard, connect_timeout_ms, "
                     "call_timeout_ms, max_calls_in_flight, backoff_min_ms, backoff_max_ms, tls, "
                     "insecure, keepalive_ms");
        }
      }
      if (remote.address.size() == 0) {
        fail(remoteTable.source().begin, kj::str(remotePath, ".address"), "missing required key");
      }
      if (!haveServices) {
        fail(remoteTable.source().begin, kj::str(remotePath, ".services"), "missing required key");
      }
      KJ_IF_MAYBE (tls, remote.tls) {
        if (remote.insecure) {
          fail(remoteTable.source().begin, kj::str(remotePath, ".insecure"),
               "insecure = true and tls = { ... } exclude each other");
        }
        if (tls->serverName.size() == 0) {
          if (!remote.address.startsWith("tcp:")) {
            fail(remoteTable.source().begin, kj::str(remotePath, ".tls.server_name"),
                 "missing required key (a unix address has no host name to verify the remote's "
                 "certificate against)");
          }
          tls->serverName = remoteHost(remote.address);
        }
      } else if (!remote.insecure) {
        fail(remoteTable.source().begin, kj::str(remotePath, ".tls"),
             "missing required key: connections to a remote are TLS (tls = { ca = \"...\", "
             "certificate = \"...\", private_key = \"...\" }); plaintext needs insecure = true, "
             "for a loopback or unix development remote");
      } else if (remote.address.startsWith("tcp:") && !isLoopback(toStd(remote.address.slice(4)))) {
        fail(remoteTable.source().begin, kj::str(remotePath, ".insecure"),
             kj::str("insecure = true is allowed only for a loopback address (127.0.0.1, ::1, "
                     "localhost) or a unix socket, not \"",
                     remote.address, "\"; configure tls = { ... } instead"));
      }
      if (remote.backoffMin > remote.backoffMax) {
        fail(remoteTable.source().begin, remotePath,
             kj::str("backoff_min_ms (", remote.backoffMin / kj::MILLISECONDS,
                     ") is above backoff_max_ms (", remote.backoffMax / kj::MILLISECONDS, ")"));
      }
      config.remotes.add(kj::mv(remote));
    }
  }

  RemoteTls parseRemoteTls(const toml::table& table, kj::StringPtr tlsPath) {
    RemoteTls tls;
    for (auto& field : inFileOrder(table)) {
      auto fieldName = toKj(field.key->str());
      auto path = kj::str(tlsPath, ".", fieldName);
      if (fieldName == "ca") {
        tls.ca = expectPath(*field.value, path);
      } else if (fieldName == "certificate") {
        tls.certificate = expectPath(*field.value, path);
      } else if (fieldName == "private_key") {
        tls.privateKey = expectPath(*field.value, path);
      } else if (fieldName == "server_name") {
        auto name = expectString(*field.value, path);
        if (name.empty()) fail(field.value->source().begin, path, "must not be empty");
        tls.serverName = toKj(name);
      } else {
        unknownKey(*field.key, path, "ca, certificate, private_key, server_name");
      }
    }
    for (auto [key, value] : {std::pair<kj::StringPtr, kj::StringPtr>{"ca", tls.ca},
                              {"certificate", tls.certificate},
                              {"private_key", tls.privateKey}}) {
      if (value.size() == 0) {
        fail(table.source().begin, kj::str(tlsPath, ".", key), "missing required key");
      }
    }
    return tls;
  }

  // The host of "tcp:host:port" or "tcp:[v6]:port".
  static kj::String remoteHost(kj::StringPtr address) {
    auto hostPort = toStd(address.slice(4));
    auto host = hostPort.starts_with('[') ? hostPort.substr(1, hostPort.find(']') - 1)
                                          : hostPort.substr(0, hostPort.rfind(':'));
    return toKj(host);
  }

  // "tcp:host:port" or "unix:/path" (a relative path is made absolute like other paths).
  kj::String parseRemoteAddress(const toml::node& node, kj::StringPtr path) {
    auto text = expectString(node, path);
    if (text.starts_with("tcp:")) {
      auto hostPort = text.substr(4);
      int64_t port = 0;
      switch (checkHostPort(hostPort, port)) {
        case HostPort::OK:
          break;
        case HostPort::MALFORMED:
          fail(node.source().begin, path,
               kj::str("\"", toKj(text), "\" is not tcp:host:port or unix:/path"));
        case HostPort::PORT_OUT_OF_RANGE:
          fail(node.source().begin, path, kj::str("port ", port, " is out of range 1..", MAX_PORT));
      }
      if (port == 0) fail(node.source().begin, path, "port 0 cannot be connected to");
      return toKj(text);
    }
    if (text.starts_with("unix:") && text.size() > 5) {
      fs::path value(text.substr(5));
      auto resolved =
          value.is_absolute() ? value.lexically_normal() : (dir / value).lexically_normal();
      return kj::str("unix:", toKj(resolved.native()));
    }
    fail(node.source().begin, path,
         kj::str("\"", toKj(text), "\" is not tcp:host:port or unix:/path"));
  }

  void parseDeploy(const toml::table& table, DaemonConfig& config) {
    for (auto& entry : inFileOrder(table)) {
      auto& value = *entry.value;
      auto name = toKj(entry.key->str());
      auto path = kj::str("deploy.", name);
      auto millis = [&]() {
        return expectInteger(value, path, 0, MAX_DRAIN_TIMEOUT_MS) * kj::MILLISECONDS;
      };
      if (name == "drain_timeout_ms") {
        config.deployDrainTimeout = millis();
      } else if (name == "ready_timeout_ms") {
        config.readyTimeout = millis();
      } else if (name == "unload_timeout_ms") {
        config.unloadTimeout = millis();
      } else if (name == "canary_window_ms") {
        config.canaryWindow = millis();
      } else if (name == "canary_min_calls") {
        config.canaryMinCalls = static_cast<uint32_t>(expectInteger(value, path, 0, 1000000000));
      } else if (name == "canary_max_error_rate") {
        config.canaryMaxErrorRate = expectNumber(value, path, 0, 1);
      } else if (name == "canary_max_p99_ms") {
        config.canaryMaxP99 = millis();
      } else {
        unknownKey(*entry.key, path,
                   "drain_timeout_ms, ready_timeout_ms, unload_timeout_ms, canary_window_ms, "
                   "canary_min_calls, canary_max_error_rate, canary_max_p99_ms");
      }
    }
  }

  // Loopback addresses only: an insecure listener must not be reachable from another machine.
  static bool isLoopback(std::string_view address) {
    auto host = address.starts_with('[') ? address.substr(1, address.find(']') - 1)
                                         : address.substr(0, address.rfind(':'));
    return host == "localhost" || host == "::1" || host.starts_with("127.");
  }

  Listener parseListener(const toml::node& element, kj::StringPtr elementPath, bool isUnix) {
    Listener listener;
    const toml::node* addressNode = &element;
    if (auto table = element.as_table()) {
      addressNode = nullptr;
      auto addressKey = isUnix ? "path" : "address";
      for (auto& field : inFileOrder(*table)) {
        auto fieldName = toKj(field.key->str());
        auto fieldPath = kj::str(elementPath, ".", fieldName);
        if (fieldName == addressKey) {
          addressNode = field.value;
        } else if (fieldName == "insecure") {
          listener.insecure = expectBoolean(*field.value, fieldPath);
        } else if (fieldName == "identity") {
          auto identity = expectString(*field.value, fieldPath);
          if (identity.empty()) fail(field.value->source().begin, fieldPath, "must not be empty");
          listener.identity = toKj(identity);
        } else {
          unknownKey(*field.key, fieldPath, kj::str(addressKey, ", insecure, identity"));
        }
      }
      if (addressNode == nullptr) {
        fail(table->source().begin, kj::str(elementPath, ".", addressKey), "missing required key");
      }
      if (listener.identity.size() > 0 && !listener.insecure) {
        fail(table->source().begin, kj::str(elementPath, ".identity"),
             "only for insecure = true (a TLS client's identity is its certificate's)");
      }
    } else if (element.as_string() == nullptr) {
      wrongType(element, elementPath, "a string or a table");
    }
    if (isUnix) {
      listener.address = expectPath(*addressNode, elementPath);
    } else {
      auto address = expectString(*addressNode, elementPath);
      int64_t port = 0;
      switch (checkHostPort(address, port)) {
        case HostPort::OK:
          break;
        case HostPort::MALFORMED:
          fail(addressNode->source().begin, elementPath,
               kj::str("\"", toKj(address), "\" is not host:port"));
        case HostPort::PORT_OUT_OF_RANGE:
          fail(addressNode->source().begin, elementPath,
               kj::str("port ", port, " is out of range 0..", MAX_PORT));
      }
      if (listener.insecure && !isLoopback(address)) {
        fail(element.source().begin, elementPath,
             kj::str("insecure = true is allowed only on a loopback address (127.0.0.1, ::1, "
                     "localhost) or a unix socket, not \"",
                     toKj(address), "\"; configure [tls] instead"));
      }
      listener.address = toKj(address);
    }
    if (listener.insecure && listener.identity.size() == 0) {
      listener.identity = kj::heapString("anonymous");
    }
    return listener;
  }

  void parseListen(const toml::table& table, DaemonConfig& config) {
    for (auto& entry : inFileOrder(table)) {
      auto name = toKj(entry.key->str());
      auto path = kj::str("listen.", name);
      if (name == "tcp" || name == "unix") {
        bool isUnix = name == "unix";
        auto& array = expectArray(*entry.value, path);
        for (size_t i = 0; i < array.size(); ++i) {
          auto listener = parseListener(*array.get(i), kj::str(path, "[", i, "]"), isUnix);
          (isUnix ? config.unix : config.tcp).add(kj::mv(listener));
        }
      } else {
        unknownKey(*entry.key, path, "tcp, unix");
      }
    }
    if (config.tcp.empty() && config.unix.empty()) {
      fail(table.source().begin, "listen", noListenAddress());
    }
  }

  void parseTls(const toml::table& table, DaemonConfig& config) {
    TlsConfig tls;
    for (auto& entry : inFileOrder(table)) {
      auto name = toKj(entry.key->str());
      auto path = kj::str("tls.", name);
      if (name == "certificate") {
        tls.certificate = expectPath(*entry.value, path);
      } else if (name == "private_key") {
        tls.privateKey = expectPath(*entry.value, path);
      } else if (name == "client_ca") {
        tls.clientCa = expectPath(*entry.value, path);
      } else if (name == "require_client_certificate") {
        tls.requireClientCertificate = expectBoolean(*entry.value, path);
      } else if (name == "identity") {
        auto source = expectString(*entry.value, path);
        if (source == "cn") {
          tls.identity = ClientIdentity::COMMON_NAME;
        } else if (source == "san-uri") {
          tls.identity = ClientIdentity::SAN_URI;
        } else if (source == "san-dns") {
          tls.identity = ClientIdentity::SAN_DNS;
        } else {
          fail(entry.value->source().begin, path,
               kj::str("\"", toKj(source), "\" is not one of \"cn\", \"san-uri\", \"san-dns\""));
        }
      } else {
        unknownKey(*entry.key, path,
                   "certificate, private_key, client_ca, require_client_certificate, identity");
      }
    }
    if (tls.certificate.size() == 0) {
      fail(table.source().begin, "tls.certificate", "missing required key");
    }
    if (tls.privateKey.size() == 0) {
      fail(table.source().begin, "tls.private_key", "missing required key");
    }
    if (tls.requireClientCertificate && tls.clientCa.size() == 0) {
      fail(table.source().begin, "tls.client_ca",
           "missing required key (clients must present a certificate issued by this CA; set "
           "require_client_certificate = false to serve clients without one)");
    }
    config.tls = kj::mv(tls);
  }

  kj::Vector<kj::String> expectStrings(const toml::node& node, kj::StringPtr path) {
    kj::Vector<kj::String> result;
    auto& array = expectArray(node, path);
    for (size_t i = 0; i < array.size(); ++i) {
      auto elementPath = kj::str(path, "[", i, "]");
      auto text = expectString(*array.get(i), elementPath);
      if (text.empty()) fail(array.get(i)->source().begin, elementPath, "must not be empty");
      result.add(toKj(text));
    }
    return result;
  }

  void parseAccess(const toml::node& node, DaemonConfig& config) {
    auto array = node.as_array();
    if (array == nullptr) wrongType(node, "access", "an array of tables ([[access]])");
    for (size_t i = 0; i < array->size(); ++i) {
      auto rulePath = kj::str("access[", i, "]");
      auto& table = expectTable(*array->get(i), rulePath);
      AccessRule rule;
      bool haveServices = false;
      for (auto& entry : inFileOrder(table)) {
        auto name = toKj(entry.key->str());
        auto path = kj::str(rulePath, ".", name);
        if (name == "identity") {
          auto identity = expectString(*entry.value, path);
          if (identity.empty()) fail(entry.value->source().begin, path, "must not be empty");
          rule.identity = toKj(identity);
        } else if (name == "services") {
          rule.services = expectStrings(*entry.value, path);
          haveServices = true;
        } else if (name == "methods") {
          rule.methods = expectStrings(*entry.value, path);
        } else {
          unknownKey(*entry.key, path, "identity, services, methods");
        }
      }
      if (rule.identity.size() == 0) {
        fail(table.source().begin, kj::str(rulePath, ".identity"), "missing required key");
      }
      if (!haveServices) {
        fail(table.source().begin, kj::str(rulePath, ".services"), "missing required key");
      }
      config.access.add(kj::mv(rule));
    }
  }

  void parseLimits(const toml::table& table, DaemonConfig& config) {
    auto& limits = config.limits;
    for (auto& entry : inFileOrder(table)) {
      auto& value = *entry.value;
      auto name = toKj(entry.key->str());
      auto path = kj::str("limits.", name);
      if (name == "max_message_bytes") {
        limits.maxMessageBytes = expectInteger(value, path, 64, int64_t(1) << 31);
      } else if (name == "traversal_limit_words") {
        limits.traversalLimitWords = expectInteger(value, path, 8, int64_t(1) << 28);
      } else if (name == "nesting_limit") {
        limits.nestingLimit = static_cast<uint32_t>(expectInteger(value, path, 4, 64));
      } else if (name == "max_connections") {
        limits.maxConnections = static_cast<uint32_t>(expectInteger(value, path, 1, 1000000));
      } else if (name == "max_calls_per_connection") {
        limits.maxCallsPerConnection =
            static_cast<uint32_t>(expectInteger(value, path, 1, 1000000));
      } else if (name == "handshake_timeout_ms") {
        limits.handshakeTimeout = expectInteger(value, path, 1, 600000) * kj::MILLISECONDS;
      } else if (name == "idle_timeout_ms") {
        limits.idleTimeout = expectInteger(value, path, 0, 86400000) * kj::MILLISECONDS;
      } else {
        unknownKey(*entry.key, path,
                   "max_message_bytes, traversal_limit_words, nesting_limit, max_connections, "
                   "max_calls_per_connection, handshake_timeout_ms, idle_timeout_ms");
      }
    }
  }

  void parseMetrics(const toml::table& table, DaemonConfig& config) {
    for (auto& entry : inFileOrder(table)) {
      auto name = toKj(entry.key->str());
      auto path = kj::str("metrics.", name);
      if (name == "listen") {
        auto address = expectString(*entry.value, path);
        int64_t port = 0;
        switch (checkHostPort(address, port)) {
          case HostPort::OK:
            break;
          case HostPort::MALFORMED:
            fail(entry.value->source().begin, path,
                 kj::str("\"", toKj(address), "\" is not host:port"));
          case HostPort::PORT_OUT_OF_RANGE:
            fail(entry.value->source().begin, path,
                 kj::str("port ", port, " is out of range 0..", MAX_PORT));
        }
        config.metricsListen = toKj(address);
      } else {
        unknownKey(*entry.key, path, "listen");
      }
    }
  }

  void parseSecurity(const toml::table& table, DaemonConfig& config) {
    for (auto& entry : inFileOrder(table)) {
      auto name = toKj(entry.key->str());
      auto path = kj::str("security.", name);
      if (name == "trusted_keys") {
        auto& array = expectArray(*entry.value, path);
        for (size_t i = 0; i < array.size(); ++i) {
          config.trustedKeys.add(expectPath(*array.get(i), kj::str(path, "[", i, "]")));
        }
      } else if (name == "allow_unsigned") {
        config.allowUnsigned = expectBoolean(*entry.value, path);
      } else {
        unknownKey(*entry.key, path, "trusted_keys, allow_unsigned");
      }
    }
  }

  void parseAdmin(const toml::table& table, DaemonConfig& config) {
    bool haveSocket = false;
    for (auto& entry : inFileOrder(table)) {
      auto name = toKj(entry.key->str());
      auto path = kj::str("admin.", name);
      if (name == "socket") {
        config.adminSocket = expectPath(*entry.value, path);
        haveSocket = true;
      } else if (name == "group") {
        auto group = expectString(*entry.value, path);
        bool ok = !group.empty() && group.size() <= 32;
        for (char c : group) {
          ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-' || c == '.');
        }
        if (!ok) {
          fail(entry.value->source().begin, path,
               "must be a group name (1 to 32 of A-Z a-z 0-9 _ - .)");
        }
        config.adminGroup = toKj(group);
      } else {
        unknownKey(*entry.key, path, "socket, group");
      }
    }
    if (!haveSocket) fail(table.source().begin, "admin.socket", "missing required key");
  }

  void parsePlugins(const toml::node& node, DaemonConfig& config) {
    auto array = node.as_array();
    // `[plugin]` instead of `[[plugin]]` is the likely slip; say which form is wanted.
    if (array == nullptr) wrongType(node, "plugin", "an array of tables ([[plugin]])");
    for (size_t i = 0; i < array->size(); ++i) {
      auto& element = *array->get(i);
      auto path = kj::str("plugin[", i, "]");
      config.plugins.add(parsePlugin(expectTable(element, path), path));
    }
  }

  PluginConfig parsePlugin(const toml::table& table, kj::StringPtr pluginPath) {
    PluginConfig plugin;
    bool havePath = false;
    for (auto& entry : inFileOrder(table)) {
      auto name = toKj(entry.key->str());
      auto path = kj::str(pluginPath, ".", name);
      if (name == "path") {
        plugin.path = expectPath(*entry.value, path);
        havePath = true;
      } else if (name == "enabled") {
        plugin.enabled = expectBoolean(*entry.value, path);
      } else if (name == "config") {
        // The plugin validates its own table; it gets it through the SDK's Config, which owns
        // its own toml++ document, so the table goes across as text.
        toml::table configTable = expectTable(*entry.value, path);
        // An inline table (`config = { ... }`) would be written back as `{ ... }`, which is not
        // a document.
        configTable.is_inline(false);
        std::ostringstream text;
        text << toml::toml_formatter(configTable);
        auto toml = text.str();
        plugin.config =
            Config::parse(kj::StringPtr(toml.c_str(), toml.size()), kj::str(file, ": ", path));
      } else if (name == "keys") {
        auto& array = expectArray(*entry.value, path);
        for (size_t i = 0; i < array.size(); ++i) {
          plugin.keys.add(toKj(expectString(*array.get(i), kj::str(path, "[", i, "]"))));
        }
      } else if (name == "databases") {
        auto& array = expectArray(*entry.value, path);
        for (size_t i = 0; i < array.size(); ++i) {
          plugin.databases.add(toKj(expectString(*array.get(i), kj::str(path, "[", i, "]"))));
        }
      } else if (name == "quota") {
        for (auto& field : inFileOrder(expectTable(*entry.value, path))) {
          auto fieldName = toKj(field.key->str());
          auto fieldPath = kj::str(path, ".", fieldName);
          if (fieldName == "workers_reserve") {
            plugin.workersReserve =
                static_cast<uint32_t>(expectInteger(*field.value, fieldPath, 0, 1024));
          } else if (fieldName == "workers_limit") {
            plugin.workersLimit =
                static_cast<uint32_t>(expectInteger(*field.value, fieldPath, 0, 1024));
          } else if (fieldName == "databases_reserve") {
            plugin.databasesReserve =
                static_cast<uint32_t>(expectInteger(*field.value, fieldPath, 0, 1024));
          } else if (fieldName == "databases_limit") {
            plugin.databasesLimit =
                static_cast<uint32_t>(expectInteger(*field.value, fieldPath, 0, 1024));
          } else if (fieldName == "remote_calls_reserve") {
            plugin.remoteCallsReserve =
                static_cast<uint32_t>(expectInteger(*field.value, fieldPath, 0, 1000000));
          } else if (fieldName == "remote_calls_limit") {
            plugin.remoteCallsLimit =
                static_cast<uint32_t>(expectInteger(*field.value, fieldPath, 0, 1000000));
          } else {
            unknownKey(*field.key, fieldPath,
                       "workers_reserve, workers_limit, databases_reserve, databases_limit, "
                       "remote_calls_reserve, remote_calls_limit");
          }
        }
      } else if (name == "admission") {
        for (auto& field : inFileOrder(expectTable(*entry.value, path))) {
          auto fieldName = toKj(field.key->str());
          auto fieldPath = kj::str(path, ".", fieldName);
          if (fieldName == "max_concurrent") {
            plugin.admissionMaxConcurrent =
                static_cast<uint32_t>(expectInteger(*field.value, fieldPath, 0, 1000000));
          } else if (fieldName == "max_queued") {
            plugin.admissionMaxQueued =
                static_cast<uint32_t>(expectInteger(*field.value, fieldPath, 0, 1000000));
          } else {
            unknownKey(*field.key, fieldPath, "max_concurrent, max_queued");
          }
        }
      } else {
        unknownKey(*entry.key, path, "path, enabled, config, keys, databases, quota, admission");
      }
    }
    if (!havePath) fail(table.source().begin, kj::str(pluginPath, ".path"), "missing required key");
    return plugin;
  }
};

[[noreturn]] void cannotRead(kj::StringPtr path, int error) {
  KJ_FAIL_REQUIRE(
      kj::str(path, ": cannot read config file: ", std::generic_category().message(error).c_str()));
}

kj::String readConfigFile(kj::StringPtr path) {
  int fd;
  do {
    fd = ::open(path.cStr(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) cannotRead(path, errno);
  kj::AutoCloseFd owned(fd);

  kj::Vector<char> bytes;
  char buffer[8192];
  for (;;) {
    auto n = ::read(owned.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      // A directory opens fine and fails here, with EISDIR.
      cannotRead(path, errno);
    }
    if (n == 0) break;
    bytes.addAll(buffer, buffer + n);
  }
  bytes.add('\0');
  return kj::String(bytes.releaseAsArray());
}

// The directory part is canonicalised so relative paths in the file mean the same thing however
// the daemon was started; the file name is kept, so messages name the file the operator wrote.
kj::String absoluteConfigPath(kj::StringPtr path) {
  fs::path given(path.cStr());
  std::error_code error;
  auto absolute = fs::absolute(given, error);
  if (!error) {
    auto dir = fs::canonical(absolute.parent_path(), error);
    if (!error) return toKj((dir / absolute.filename()).native());
  }
  return toKj(absolute.lexically_normal().native());
}

}  // namespace

DaemonConfig parseDaemonConfig(kj::StringPtr text, kj::StringPtr path, uint32_t cpuCount) {
  KJ_REQUIRE(path.size() > 0, "config path must not be empty");
  KJ_REQUIRE(cpuCount > 0, "cpuCount must be positive");

  toml::table root;
  try {
    root = toml::parse(toStd(text), std::string(path.cStr()));
  } catch (const toml::parse_error& e) {
    auto& where = e.source().begin;
    KJ_FAIL_REQUIRE(kj::str(path, ":", where.line, ":", where.column, ": ", toKj(e.description())));
  }

  std::error_code error;
  auto absolute = fs::absolute(fs::path(path.cStr()), error).lexically_normal();
  KJ_REQUIRE(!error, kj::str(path, ": cannot make the path absolute: ", error.message().c_str()));
  DaemonConfig config;
  config.sourcePath = toKj(absolute.native());
  // Absent `shards` means one per core, the same as `shards = 0`.
  config.shards = 0;
  Parser(path, absolute.parent_path(), cpuCount).parse(root, config);
  return config;
}

DaemonConfig loadDaemonConfig(kj::StringPtr path, uint32_t cpuCount) {
  auto text = readConfigFile(path);
  return parseDaemonConfig(text, absoluteConfigPath(path), cpuCount);
}

kj::StringPtr identitySourceName(ClientIdentity source) {
  switch (source) {
    case ClientIdentity::COMMON_NAME:
      return "cn";
    case ClientIdentity::SAN_URI:
      return "san-uri";
    case ClientIdentity::SAN_DNS:
      return "san-dns";
  }
  return "cn";
}

}  // namespace payhost::host
