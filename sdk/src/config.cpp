#include <payhost/config.h>

#include <kj/debug.h>

#include <toml++/toml.h>

#include <algorithm>
#include <sstream>
#include <vector>

namespace payhost {

class Config::Impl {
public:
  explicit Impl(toml::table table) : table(kj::mv(table)) {}
  toml::table table;
};

namespace {

kj::StringPtr typeName(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

const toml::node* find(const toml::table& table, kj::StringPtr key) {
  return table.at_path(std::string_view(key.begin(), key.size())).node();
}

[[noreturn]] void wrongType(kj::StringPtr key, kj::StringPtr expected, const toml::node& node) {
  KJ_FAIL_REQUIRE("config key has the wrong type", key, expected, typeName(node));
}

}  // namespace

Config::Config() : impl(kj::heap<const Impl>(toml::table{})) {}
Config::Config(kj::Own<const Impl> impl) : impl(kj::mv(impl)) {}
Config::~Config() noexcept = default;
Config::Config(Config&&) noexcept = default;
Config& Config::operator=(Config&&) noexcept = default;

Config Config::parse(kj::StringPtr toml, kj::StringPtr sourceName) {
  try {
    return Config(kj::heap<const Impl>(toml::parse(std::string_view(toml.begin(), toml.size()),
                                                   std::string_view(sourceName.cStr()))));
  } catch (const toml::parse_error& e) {
    auto& where = e.source().begin;
    KJ_FAIL_REQUIRE(
        kj::str(sourceName, ":", where.line, ":", where.column, ": ", e.description().data()));
  }
}

kj::Maybe<kj::String> Config::tryString(kj::StringPtr key) const {
  auto node = find(impl->table, key);
  if (node == nullptr) return nullptr;
  auto value = node->as_string();
  if (value == nullptr) wrongType(key, "string", *node);
  return kj::heapString(value->get().data(), value->get().size());
}

kj::Maybe<int64_t> Config::tryInteger(kj::StringPtr key) const {
  auto node = find(impl->table, key);
  if (node == nullptr) return nullptr;
  auto value = node->as_integer();
  if (value == nullptr) wrongType(key, "integer", *node);
  return value->get();
}

kj::Maybe<double> Config::tryNumber(kj::StringPtr key) const {
  auto node = find(impl->table, key);
  if (node == nullptr) return nullptr;
  if (auto integer = node->as_integer()) return static_cast<double>(integer->get());
  auto value = node->as_floating_point();
  if (value == nullptr) wrongType(key, "number", *node);
  return value->get();
}

kj::Maybe<bool> Config::tryBoolean(kj::StringPtr key) const {
  auto node = find(impl->table, key);
  if (node == nullptr) return nullptr;
  auto value = node->as_boolean();
  if (value == nullptr) wrongType(key, "boolean", *node);
  return value->get();
}

kj::String Config::string(kj::StringPtr key, kj::StringPtr defaultValue) const {
  KJ_IF_MAYBE (value, tryString(key)) {
    return kj::mv(*value);
  }
  return kj::heapString(defaultValue);
}

int64_t Config::integer(kj::StringPtr key, int64_t defaultValue) const {
  return tryInteger(key).orDefault(defaultValue);
}

double Config::number(kj::StringPtr key, double defaultValue) const {
  return tryNumber(key).orDefault(defaultValue);
}

bool Config::boolean(kj::StringPtr key, bool defaultValue) const {
  return tryBoolean(key).orDefault(defaultValue);
}

Config Config::section(kj::StringPtr key) const {
  auto node = find(impl->table, key);
  if (node == nullptr) return Config();
  auto table = node->as_table();
  if (table == nullptr) wrongType(key, "table", *node);
  return Config(kj::heap<const Impl>(*table));
}

kj::Array<kj::String> Config::keys() const {
  // toml::table is a sorted map; the keys remember where they were written.
  std::vector<const toml::key*> ordered;
  ordered.reserve(impl->table.size());
  for (auto& [key, value] : impl->table)
    ordered.push_back(&key);
  std::stable_sort(ordered.begin(), ordered.end(), [](const toml::key* a, const toml::key* b) {
    auto& x = a->source().begin;
    auto& y = b->source().begin;
    return x.line != y.line ? x.line < y.line : x.column < y.column;
  });
  auto builder = kj::heapArrayBuilder<kj::String>(ordered.size());
  for (auto key : ordered)
    builder.add(kj::heapString(key->str().data(), key->str().size()));
  return builder.finish();
}

kj::String Config::toToml() const {
  // An inline table ({ a = 1 }) would be written back as a bare "{ ... }", which is not a document.
  toml::table copy = impl->table;
  copy.is_inline(false);
  std::ostringstream out;
  out << toml::toml_formatter(copy);
  auto text = out.str();
  return kj::heapString(text.data(), text.size());
}

}  // namespace payhost
