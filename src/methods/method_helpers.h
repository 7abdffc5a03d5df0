// Helpers shared by method implementations: config lists, exclusion, and the summary of a
// model's adaptable layers that "matched nothing" errors print.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/methods/target_modules.h"

namespace peft {
class PeftModel;
}

namespace peft::methods {

bool contains(const std::vector<std::string>& v, const std::string& s);
/// A config object must be an object with only `keys` (plus HF's common keys), and its
/// peft_type, when present, must be `peft_type`; errors name `where` and the key.
void check_config_keys(const nlohmann::json& j, const std::vector<std::string>& keys, const std::string& peft_type,
                       const std::string& component, const std::string& where);
/// A string or list-of-strings field (null or absent: empty); other types name the key.
std::vector<std::string> string_list(const nlohmann::json& j, const char* key, const std::string& where);
/// Whether `name` matches exclude_modules (HF's rules, no layer selection).
bool excluded(const std::string& name, const TargetModules& exclude);
/// "c_attn, attn.c_proj, ... (full names look like 'transformer.h.0.attn.c_attn')"
std::string describe_linears(PeftModel& model);
/// The blocks (by module name) whose index is in `layers` (empty: every block); none is an error.
std::vector<std::string> selected_blocks(PeftModel& model, const std::vector<int64_t>& layers,
                                         const std::string& component);
/// Each family's query and value projections (HF PEFT's LoRA defaults); empty for unknown types.
TargetModules query_value_targets(const std::string& model_type);
/// Whether a module lies inside one of the model's transformer blocks.
bool inside_block(PeftModel& model, const std::string& module_name);
/// Gives `adapter` trainable copies of every LayerNorm / RMSNorm parameter (Houlsby, Compacter).
void train_layer_norms(PeftModel& model, const std::string& adapter);

}  // namespace peft::methods
