// What prompt tuning, P-tuning and prefix tuning share (HF PEFT's PromptLearningConfig and
// prompt encoders): p virtual tokens whose table may be produced by a trainable encoder (a
// reparameterization), put into the model as input embeddings or as every layer's attention
// prefix. The delta stores only the table, "prompt_embeddings"; an encoder lives in the
// training state alone and is dropped ("ejected") when a saved delta is loaded.
#pragma once

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "peft/models/io.h"
#include "peft/nn/prompt_encoder.h"

namespace peft {
class PeftModel;
}

namespace peft::methods {

/// HF's PromptLearningConfig fields. Zero means "take it from the model" (HF fills them the same way).
struct PromptLearningFields {
  int64_t num_virtual_tokens = 20;
  int64_t token_dim = 0;
  /// 1, or 2 for an encoder-decoder (HF's default there): the prompt table holds a block of p rows
  /// per submodule (the encoder's first), a prefix is laid out for both.
  int64_t num_transformer_submodules = 0;
  int64_t num_attention_heads = 0;
  int64_t num_layers = 0;
  /// Base modules trained and saved whole with the prompt (HF's PromptLearningConfig field; a
  /// SEQ_CLS / TOKEN_CLS head is added implicitly either way).
  std::vector<std::string> modules_to_save;

  void validate(const std::string& component) const;
  /// Fills unset fields from the model, and checks set ones against it (a mismatch names the key).
  void resolve(const models::ModelGeometry& g, int64_t token_dim, int64_t heads, const std::string& component);
};

/// "prompt" for a prompt encoder's virtual-token table (exempt from weight decay by default), else "".
std::string prompt_parameter_role(const std::string& parameter);

/// The options new prompt tensors take (the base's dtype and device).
at::TensorOptions base_tensor_options(PeftModel& model);

}  // namespace peft::methods
