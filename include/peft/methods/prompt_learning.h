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
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/embedding.h>

#include "peft/models/model.h"

namespace peft {
class PeftModel;
}

namespace peft::methods {

/// HF's PromptLearningConfig fields. Zero means "take it from the model" (HF fills them the same way).
struct PromptLearningFields {
  int64_t num_virtual_tokens = 20;
  int64_t token_dim = 0;
  int64_t num_transformer_submodules = 1;
  int64_t num_attention_heads = 0;
  int64_t num_layers = 0;

  static const std::vector<std::string>& keys();
  void read(const nlohmann::json& j, const std::string& where, const std::string& component);
  void write(nlohmann::json& j) const;
  void validate(const std::string& component) const;
  /// Fills unset fields from the model, and checks set ones against it (a mismatch names the key).
  void resolve(const models::ModelGeometry& g, int64_t token_dim, int64_t heads, const std::string& component);
};

enum class PromptPlacement {
  kInputEmbeddings,  ///< table [p, hidden] -> ModelInputs::prompt_embeds
  kAttentionPrefix,  ///< table [p, 2 * layers * kv_heads * head_dim] -> ModelInputs::attention_prefix
};

class PromptEncoder : public torch::nn::Module {
 public:
  /// `table`: the trainable embedding [p, width] (the encoder's input when `transform` is given).
  PromptEncoder(at::Tensor table, torch::nn::Sequential transform, PromptPlacement placement,
                const models::ModelGeometry& geometry);
  /// The batch with the prompt in place.
  models::ModelInputs prepare(const models::ModelInputs& inputs);
  /// The virtual-token table [p, width]: the embedding itself (a live parameter) without an
  /// encoder, else the encoder's output.
  at::Tensor prompt_embeddings();
  /// Replaces embedding + encoder by a table of the encoder's current output.
  void eject();
  bool has_encoder() const { return !transform_.is_empty(); }
  int64_t num_virtual_tokens() const { return embedding_->weight.size(0); }

 private:
  torch::nn::Embedding embedding_{nullptr};
  torch::nn::Sequential transform_{nullptr};
  PromptPlacement placement_;
  models::ModelGeometry geometry_;
};

/// The options new prompt tensors take (the base's dtype and device).
at::TensorOptions base_tensor_options(PeftModel& model);

}  // namespace peft::methods
