// A config struct's fields declared once — JSON key, member, and (for fields whose JSON form is
// not the member's own) how it is read and written — giving its reader, its writer and its key
// list. Defaults are the members' initializers: an absent or null key keeps them.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/core/json_io.h"

namespace peft::core {

/// An optional string as HF writes it: null when empty.
inline nlohmann::json or_null(const std::string& s) { return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s); }

template <class C>
struct ConfigField {
  std::string key;
  /// Reads the field from the whole config object (called whatever the object holds).
  std::function<void(C&, const nlohmann::json&, const std::string& component, const std::string& where)> read;
  std::function<void(const C&, nlohmann::json&)> write;
};

/// A field read with core::get_or (wrong types named) and written as the member's value.
template <class C, class T>
ConfigField<C> field(const char* key, T C::*member) {
  return {key,
          [key, member](C& c, const nlohmann::json& j, const std::string& component, const std::string& where) {
            c.*member = core::get_or<T>(j, key, c.*member, component, where);
          },
          [key, member](const C& c, nlohmann::json& j) { j[key] = c.*member; }};
}

/// A field read as `field` reads it, written by `write` (a computed or optional JSON form).
template <class C, class Write>
ConfigField<C> written_as(ConfigField<C> f, Write write) {
  f.write = std::move(write);
  return f;
}

template <class C>
std::vector<std::string> field_keys(const std::vector<ConfigField<C>>& fields) {
  std::vector<std::string> keys;
  for (const auto& f : fields) keys.push_back(f.key);
  return keys;
}

/// Reads every field of `fields` from `j` into `c` after refusing keys that are not among them.
template <class C>
void read_fields(const nlohmann::json& j, const std::vector<ConfigField<C>>& fields, C& c, const std::string& component,
                 const std::string& where) {
  reject_unknown_keys(j, field_keys(fields), component, where);
  for (const auto& f : fields) f.read(c, j, component, where);
}

}  // namespace peft::core
