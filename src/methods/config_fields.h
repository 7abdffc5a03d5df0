// Method configs from their field tables (core/json_fields.h): the JSON forms HF PEFT's configs
// use, and from_json / to_json over the common fields plus a table.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/json_fields.h"
#include "methods/method_helpers.h"
#include "peft/core/json_io.h"
#include "peft/methods/method.h"

namespace peft::methods {

using core::ConfigField;
using core::field;
using core::field_keys;
using core::or_null;
using core::written_as;

/// A string or list-of-strings field, written as a list, or null when empty (HF's Optional[list]).
template <class C>
ConfigField<C> string_list_field(const char* key, std::vector<std::string> C::*member) {
  return {key,
          [key, member](C& c, const nlohmann::json& j, const std::string&, const std::string& where) {
            if (j.contains(key) && !j[key].is_null()) c.*member = string_list(j, key, where);
          },
          [key, member](const C& c, nlohmann::json& j) {
            j[key] = (c.*member).empty() ? nlohmann::json(nullptr) : nlohmann::json(c.*member);
          }};
}

/// A target_modules-style field (TargetModules' list / regex / "all-linear" forms); absent: empty.
template <class C>
ConfigField<C> targets_field(const char* key, TargetModules C::*member) {
  return {key,
          [key, member](C& c, const nlohmann::json& j, const std::string&, const std::string& where) {
            c.*member = TargetModules::from_json(j.value(key, nlohmann::json()), where + " " + key);
          },
          [key, member](const C& c, nlohmann::json& j) { j[key] = (c.*member).to_json(); }};
}

/// A targets field written only when set: older HF PEFT releases refuse keys they do not know
/// (exclude_modules).
template <class C>
ConfigField<C> optional_targets_field(const char* key, TargetModules C::*member) {
  return written_as(targets_field(key, member), [key, member](const C& c, nlohmann::json& j) {
    if (!(c.*member).empty()) j[key] = (c.*member).to_json();
  });
}

/// A {module pattern: number} object (rank_pattern / alpha_pattern); absent or null: empty.
template <class C, class T, class Write>
ConfigField<C> pattern_field(const char* key, std::vector<std::pair<std::string, T>> C::*member, Write write_value) {
  return {key,
          [key, member](C& c, const nlohmann::json& j, const std::string& component, const std::string& where) {
            if (!j.contains(key) || j[key].is_null()) return;
            PEFT_CHECK(j[key].is_object(), component, "{}: '{}' must be an object, found {}", where, key, j[key].dump());
            (c.*member).clear();
            for (auto it = j[key].begin(); it != j[key].end(); ++it) {
              PEFT_CHECK(it.value().is_number(), component, "{}: {}['{}'] must be a number", where, key, it.key());
              (c.*member).emplace_back(it.key(), it.value().template get<T>());
            }
          },
          [key, member, write_value](const C& c, nlohmann::json& j) {
            j[key] = nlohmann::json::object();
            for (const auto& [k, v] : c.*member) j[key][k] = write_value(v);
          }};
}

/// Checks the keys (unknown ones named with the known list) and the peft_type, then reads the
/// common fields and every field over a default config (validation is the caller's).
template <class C>
std::shared_ptr<C> read_config(const nlohmann::json& j, const std::vector<ConfigField<C>>& fields,
                               const std::string& component, const std::string& where) {
  auto c = std::make_shared<C>();
  check_config_keys(j, field_keys(fields), c->peft_type(), component, where);
  read_common(j, c->common, where);
  for (const auto& f : fields) f.read(*c, j, component, where);
  return c;
}

/// The common fields, then every field in declaration order.
template <class C>
nlohmann::json write_config(const C& c, const std::vector<ConfigField<C>>& fields) {
  nlohmann::json j;
  write_common(j, c.common, c.peft_type());
  for (const auto& f : fields) f.write(c, j);
  return j;
}

}  // namespace peft::methods
