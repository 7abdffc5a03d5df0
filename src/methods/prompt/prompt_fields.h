// HF's PromptLearningConfig fields as config fields of a prompt method whose config holds them
// in `prompt` (zero = "take it from the model", written as null).
#pragma once

#include <vector>

#include "methods/config_fields.h"
#include "peft/methods/prompt/prompt_learning.h"

namespace peft::methods {

template <class C>
std::vector<ConfigField<C>> prompt_learning_fields() {
  auto member = [](const char* key, int64_t PromptLearningFields::*m, bool null_when_zero) -> ConfigField<C> {
    return {key,
            [key, m](C& c, const nlohmann::json& j, const std::string& component, const std::string& where) {
              c.prompt.*m = core::get_or<int64_t>(j, key, c.prompt.*m, component, where);
            },
            [key, m, null_when_zero](const C& c, nlohmann::json& j) {
              const int64_t v = c.prompt.*m;
              j[key] = null_when_zero && v <= 0 ? nlohmann::json(nullptr) : nlohmann::json(v);
            }};
  };
  // Written only when set: HF PEFT releases before prompt methods took modules_to_save refuse the key.
  ConfigField<C> modules_to_save = {
      "modules_to_save",
      [](C& c, const nlohmann::json& j, const std::string&, const std::string& where) {
        c.prompt.modules_to_save = string_list(j, "modules_to_save", where);
      },
      [](const C& c, nlohmann::json& j) {
        if (!c.prompt.modules_to_save.empty()) j["modules_to_save"] = c.prompt.modules_to_save;
      }};
  using P = PromptLearningFields;
  return {member("num_virtual_tokens", &P::num_virtual_tokens, false), member("token_dim", &P::token_dim, true),
          member("num_transformer_submodules", &P::num_transformer_submodules, true),
          member("num_attention_heads", &P::num_attention_heads, true), member("num_layers", &P::num_layers, true),
          modules_to_save};
}

/// The prompt-learning fields, then the method's own.
template <class C>
std::vector<ConfigField<C>> with_prompt_learning_fields(std::vector<ConfigField<C>> own) {
  auto all = prompt_learning_fields<C>();
  all.insert(all.end(), own.begin(), own.end());
  return all;
}

}  // namespace peft::methods
