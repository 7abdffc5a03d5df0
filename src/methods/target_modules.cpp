#include "peft/methods/target_modules.h"

#include <algorithm>
#include <regex>

#include <nlohmann/json.hpp>

#include "peft/core/error.h"
#include "peft/core/strings.h"

namespace peft::methods {
namespace {

std::regex compile(const std::string& pattern, const std::string& what) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    fail("methods", fmt::format("{}: invalid regular expression '{}': {}", what, pattern, e.what()));
  }
}

// HF PEFT's rule: the first numbered segment after a named one is the layer index (a lazy match:
// in "layers.1.experts.0.w" the layer is 1, not the expert number 0).
std::optional<int64_t> layer_index(const std::string& name, const std::vector<std::string>& patterns) {
  std::smatch m;
  if (patterns.empty()) {
    static const std::regex any(R"(.*?\.[^.]*\.(\d+)\..*)");
    if (std::regex_match(name, m, any)) return std::stoll(m[1].str());
    return std::nullopt;
  }
  for (const auto& p : patterns) {
    std::regex re(".*?\\." + p + "\\.(\\d+)\\..*");
    if (std::regex_match(name, m, re)) return std::stoll(m[1].str());
  }
  return std::nullopt;
}

}  // namespace

TargetModules TargetModules::from_json(const nlohmann::json& j, const std::string& where) {
  TargetModules t;
  if (j.is_null()) return t;
  if (j.is_string()) {
    t.regex = j.get<std::string>();
    compile(*t.regex, where);
    return t;
  }
  PEFT_CHECK(j.is_array(), "methods", "{}: expected a string (regex) or a list of module names, found {}", where,
             j.dump());
  for (const auto& e : j) {
    PEFT_CHECK(e.is_string() && !e.get<std::string>().empty(), "methods",
               "{}: entries must be non-empty strings, found {}", where, e.dump());
    t.names.push_back(e.get<std::string>());
  }
  return t;
}

nlohmann::json TargetModules::to_json() const {
  if (regex) return *regex;
  if (names.empty()) return nullptr;
  return names;
}

bool matches_target(const std::string& name, const TargetModules& targets, const LayerSelection& layers) {
  if (targets.regex) return std::regex_match(name, compile(*targets.regex, "target_modules"));
  bool found = std::any_of(targets.names.begin(), targets.names.end(),
                           [&](const std::string& t) { return core::is_or_ends_with_segment(name, t); });
  if (!found || layers.layers_to_transform.empty()) return found;
  auto idx = layer_index(name, layers.layers_pattern);
  return idx && std::find(layers.layers_to_transform.begin(), layers.layers_to_transform.end(), *idx) !=
                    layers.layers_to_transform.end();
}

bool inside_any(const std::string& name, const std::vector<std::string>& names) {
  for (const auto& n : names) {
    if (core::is_or_ends_with_segment(name, n)) return true;
    // name lies below a module called n: "<...>n.<rest>" where n is a whole segment
    for (size_t pos = name.find(n + "."); pos != std::string::npos; pos = name.find(n + ".", pos + 1))
      if (pos == 0 || name[pos - 1] == '.') return true;
  }
  return false;
}

std::optional<std::string> pattern_key(const std::string& name, const std::vector<std::string>& keys) {
  for (const auto& k : keys)
    if (std::regex_match(name, compile("(.*\\.)?" + k, "rank_pattern/alpha_pattern"))) return k;
  return std::nullopt;
}

}  // namespace peft::methods
