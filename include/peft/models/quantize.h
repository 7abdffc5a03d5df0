// Quantized frozen bases (QLoRA): which linears of a model are stored quantized, how, and what
// that storage costs. load_pretrained quantizes each checkpoint tensor as it reads it
// (LoadOptions::quantization); quantize_model does the same to a model already in memory.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/ScalarType.h>
#include <nlohmann/json_fwd.hpp>

#include "peft/nn/adaptable_linear.h"
#include "peft/nn/quantization.h"

namespace peft::models {

class PretrainedModel;

struct QuantizationConfig {
  nn::QuantType type = nn::QuantType::kNF4;
  /// 4-bit formats: quantize the block absmax values again (8 bits per value, blocks of 256).
  bool double_quant = false;
  /// What quantized layers compute in; the base's other floating tensors (norms, embeddings,
  /// biases, skipped layers) are stored in it too unless LoadOptions::dtype says otherwise.
  c10::ScalarType compute_dtype = c10::kFloat;
  /// Linears kept unquantized, by module name or trailing name ("lm_head", "mlp.down_proj").
  /// Unset: the model's heads (lm_head, a classifier), as HF's bitsandbytes integration keeps the
  /// output layer. Newly initialized heads and linears whose weight is tied to another tensor are
  /// never quantized.
  std::optional<std::vector<std::string>> skip_modules;

  /// {"type": "nf4", "double_quant": true, "compute_dtype": "bfloat16", "skip_modules": [...]};
  /// bad keys or values are errors naming `where`.
  static QuantizationConfig from_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
};

/// The AdaptableLinears `config` quantizes in `model`, by module name.
std::vector<std::pair<std::string, nn::AdaptableLinear>> layers_to_quantize(PretrainedModel& model,
                                                                            const QuantizationConfig& config);
/// Their module names.
std::vector<std::string> linears_to_quantize(PretrainedModel& model, const QuantizationConfig& config);
/// Quantizes those linears of an in-memory model, one layer at a time, and casts the base's other
/// floating tensors to the compute dtype.
void quantize_model(PretrainedModel& model, const QuantizationConfig& config);

/// What the quantized layers of a model hold.
struct QuantizedStorage {
  int64_t layers = 0;
  int64_t weights = 0;  ///< weights the codes stand for
  int64_t bytes = 0;    ///< codes, absmax values and their second level
  std::string formats;  ///< e.g. "nf4 (double quant)"; empty when nothing is quantized
};
QuantizedStorage quantized_storage(PretrainedModel& model);

}  // namespace peft::models
