// Writing a model as a Hugging Face directory (config.json + model.safetensors), atomically.
#pragma once

#include <string>

#include "peft/models/model.h"

namespace peft::models {

/// Tied weights are stored once, as Hugging Face stores them; deltas must be merged or
/// unloaded first (an AdaptableLinear with an unmerged delta is refused by name).
void save_pretrained(PretrainedModel& model, const std::string& dir);

}  // namespace peft::models
