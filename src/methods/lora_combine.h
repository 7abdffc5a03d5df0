// LoRA's weighted combinations (PeftModel::add_weighted_adapter), with HF PEFT's semantics.
#pragma once

#include <string>
#include <vector>

#include "peft/methods/method.h"

namespace peft::methods {

void combine_lora(PeftModel& model, const std::vector<std::string>& sources, const std::vector<double>& weights,
                  const std::string& target, const WeightedCombination& how);

}  // namespace peft::methods
