#include "peft/models/save.h"

#include <filesystem>

#include <torch/torch.h>

#include "peft/core/atomic_file.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"

namespace peft::models {

void save_pretrained(PretrainedModel& model, const std::string& dir) {
  for (const auto& [name, lin] : model.adaptable_linears()) {
    PEFT_CHECK(lin->adapters().empty(), "models",
               "save_pretrained: '{}' still carries adapter deltas; merge_and_unload() or unload() first", name);
    PEFT_CHECK(!lin->quantized(), "models",
               "save_pretrained: '{}' is stored quantized ({}), and a Hugging Face model directory holds wide "
               "weights; load the base unquantized (e.g. peft-merge --dtype bfloat16) to write one",
               name, nn::quant_type_name(lin->quantized_weight()->type));
  }
  safetensors::TensorMap weights;
  for (auto& item : model.named_parameters()) weights[item.key()] = item.value().detach().cpu().contiguous();
  for (auto& item : model.named_buffers()) weights[item.key()] = item.value().detach().cpu().contiguous();
  auto config = model.config_json();
  if (!weights.empty()) {
    const auto t = weights.begin()->second.scalar_type();
    config["torch_dtype"] = t == at::kBFloat16 ? "bfloat16" : t == at::kHalf ? "float16" : t == at::kDouble ? "float64" : "float32";
  }
  core::write_directory_atomic(dir, [&](const std::string& staging) {
    safetensors::save_file(staging + "/model.safetensors", weights, {{"format", "pt"}});
    core::write_json_file(staging + "/config.json", config);
  });
}

}  // namespace peft::models
