#include "method_helpers.h"

#include <algorithm>
#include <map>

#include "peft/nn/layer_norm.h"
#include "peft/core/error.h"
#include "peft/nn/rms_norm.h"
#include "peft/peft_model.h"

namespace peft::methods {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

void check_config_keys(const nlohmann::json& j, const std::vector<std::string>& keys, const std::string& peft_type,
                       const std::string& c, const std::string& where) {
  PEFT_CHECK(j.is_object(), c, "{}: expected a JSON object", where);
  for (auto it = j.begin(); it != j.end(); ++it)
    PEFT_CHECK(contains(keys, it.key()) || contains(common_keys(), it.key()), c, "{}: unknown key '{}' (keys: {})",
               where, it.key(), fmt::join(keys, ", "));
  if (j.contains("peft_type"))
    PEFT_CHECK(j["peft_type"] == peft_type, c, "{}: peft_type must be \"{}\", found {}", where, peft_type,
               j["peft_type"].dump());
}

std::vector<std::string> string_list(const nlohmann::json& j, const char* key, const std::string& where) {
  std::vector<std::string> out;
  if (!j.contains(key) || j[key].is_null()) return out;
  const auto& v = j[key];
  if (v.is_string()) return {v.get<std::string>()};
  PEFT_CHECK(v.is_array(), "methods", "{}: '{}' must be a list of strings, found {}", where, key, v.dump());
  for (const auto& e : v) {
    PEFT_CHECK(e.is_string(), "methods", "{}: '{}' entries must be strings, found {}", where, key, e.dump());
    out.push_back(e.get<std::string>());
  }
  return out;
}

bool excluded(const std::string& name, const TargetModules& exclude) {
  if (exclude.empty()) return false;
  return matches_target(name, exclude, LayerSelection{});
}

// Layer names summarized for error messages: the distinct last segments, then one example.
std::string describe_linears(PeftModel& model) {
  std::vector<std::string> leaves;
  std::string example;
  for (const auto& [name, lin] : model.linears()) {
    auto leaf = name.substr(name.rfind('.') + 1);
    auto parent = name.substr(0, name.rfind('.'));
    auto key = parent.substr(parent.rfind('.') + 1) + "." + leaf;
    if (!contains(leaves, key)) leaves.push_back(key);
    if (example.empty()) example = name;
  }
  return fmt::format("{} (full names look like '{}')", fmt::join(leaves, ", "), example);
}

std::vector<std::string> selected_blocks(PeftModel& model, const std::vector<int64_t>& layers,
                                         const std::string& component) {
  std::vector<std::string> out;
  for (const auto& [path, block] : model.blocks()) {
    const std::string last = path.substr(path.rfind('.') + 1);
    const int64_t index = !last.empty() && std::all_of(last.begin(), last.end(), ::isdigit) ? std::stoll(last) : -1;
    if (layers.empty() || std::find(layers.begin(), layers.end(), index) != layers.end()) out.push_back(path);
  }
  PEFT_CHECK(!out.empty(), component, "layers_to_transform {} selects none of the {} blocks of this {} model",
             nlohmann::json(layers).dump(), model.blocks().size(), model.base_model().model_type());
  return out;
}

void train_layer_norms(PeftModel& model, const std::string& adapter) {
  for (const auto& item : model.base_model().named_modules("", false))
    if (std::dynamic_pointer_cast<nn::LayerNormImpl>(item.value()) ||
        std::dynamic_pointer_cast<nn::RMSNormImpl>(item.value()))
      for (const auto& p : item.value()->named_parameters(false))
        model.add_trainable_base_tensor(adapter, item.key() + "." + p.key());
}

TargetModules query_value_targets(const std::string& model_type) {
  static const std::map<std::string, std::vector<std::string>> defaults = {
      {"gpt2", {"c_attn"}}, {"llama", {"q_proj", "v_proj"}}, {"mistral", {"q_proj", "v_proj"}},
      {"bert", {"query", "value"}}, {"roberta", {"query", "value"}}, {"vit", {"query", "value"}}, {"t5", {"q", "v"}}};
  TargetModules t;
  auto it = defaults.find(model_type);
  if (it != defaults.end()) t.names = it->second;
  return t;
}

bool inside_block(PeftModel& model, const std::string& name) {
  for (const auto& [block, holder] : model.blocks())
    if (name.compare(0, block.size() + 1, block + ".") == 0) return true;
  return false;
}

}  // namespace peft::methods
