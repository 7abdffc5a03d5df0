// JSON helpers shared by every config reader: errors name the file and the key.
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/core/error.h"

namespace peft::core {

/// Parses a JSON file; a missing file or bad JSON is a peft::Error naming the file.
nlohmann::json read_json_file(const std::string& path);
/// The same, keeping every object's keys in the file's order.
nlohmann::ordered_json read_ordered_json_file(const std::string& path);
/// Writes `j` (2-space indent, sorted keys) atomically.
void write_json_file(const std::string& path, const nlohmann::json& j);
void write_ordered_json_file(const std::string& path, const nlohmann::ordered_json& j);

/// Rejects every key of `j` not in `known`; `what` names the object in the error.
void reject_unknown_keys(const nlohmann::json& j, std::initializer_list<const char*> known,
                         const std::string& component, const std::string& what);
void reject_unknown_keys(const nlohmann::json& j, const std::vector<std::string>& known, const std::string& component,
                         const std::string& what);

/// `j[key]` converted to T, or `fallback` when the key is absent or null. A value of the wrong
/// type is an error naming `where` and the key.
template <typename T>
T get_or(const nlohmann::json& j, const char* key, const T& fallback, const std::string& component,
         const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(component, fmt::format("{}: key '{}' has the wrong type ({}: {})", where, key,
                                it->type_name(), it->dump()));
  }
}

}  // namespace peft::core
