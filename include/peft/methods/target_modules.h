// Hugging Face PEFT's module-selection rules (check_target_module_exists):
//  - a single string is a regex that must match the full module name;
//  - a list matches a full name, or a name ending in "." + entry;
//  - layers_to_transform keeps only listed layer indices (list targets only), the index being
//    the number after layers_pattern (or after any segment when no pattern is given).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace peft::methods {

struct TargetModules {
  std::vector<std::string> names;  ///< list form
  std::optional<std::string> regex;  ///< string form (full match)
  bool empty() const { return names.empty() && !regex; }

  /// From JSON: null -> empty, string -> regex, array of strings -> list.
  static TargetModules from_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
};

struct LayerSelection {
  std::vector<int64_t> layers_to_transform;  ///< empty = all layers
  std::vector<std::string> layers_pattern;   ///< empty = any segment
};

/// Whether `module_name` is selected by `targets` and `layers`.
bool matches_target(const std::string& module_name, const TargetModules& targets, const LayerSelection& layers);

/// Whether `module_name` equals or lies inside a module named by one of `names` (modules_to_save rule).
bool inside_any(const std::string& module_name, const std::vector<std::string>& names);

/// HF's rank_pattern / alpha_pattern lookup: the first key k for which "(.*\.)?k" fully
/// matches `module_name`, or nullopt.
std::optional<std::string> pattern_key(const std::string& module_name, const std::vector<std::string>& keys);

}  // namespace peft::methods
