// The prompt-encoder extension point: p virtual tokens, from a trainable table or from a
// trainable transform of it (a reparameterization), put into a batch as input embeddings or as
// every layer's attention prefix before the backbone sees it (prompt / prefix / P-tuning).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/embedding.h>

#include "peft/models/io.h"

namespace peft::nn {

enum class PromptPlacement {
  kInputEmbeddings,  ///< table [p, hidden] -> ModelInputs::prompt_embeds
  kAttentionPrefix,  ///< table [p, 2 * layers * kv_heads * head_dim] -> ModelInputs::attention_prefix
};

class PromptEncoder : public torch::nn::Module {
 public:
  /// `table`: the trainable embedding [p, width] (the encoder's input when `transform` is given).
  /// `submodules` 2 (encoder-decoders, HF's num_transformer_submodules): input embeddings take the
  /// first half of the table's rows (the encoder's); a prefix's layer l takes rows 4l and 4l + 1 of
  /// the key/value rows repeated twice, as HF PEFT's get_prompt lays them out.
  PromptEncoder(at::Tensor table, torch::nn::Sequential transform, PromptPlacement placement,
                const models::ModelGeometry& geometry, int64_t submodules = 1);
  /// The batch with the prompt in place.
  models::ModelInputs prepare(const models::ModelInputs& inputs);
  /// The virtual-token table [p, width]: the embedding itself (a live parameter) without an
  /// encoder, else the encoder's output.
  at::Tensor prompt_embeddings();
  /// Replaces embedding + encoder by a table of the encoder's current output.
  void eject();
  bool has_encoder() const { return !transform_.is_empty(); }
  /// The positions the prompt adds to the sequence (input embeddings) or to every layer's keys (prefix).
  int64_t num_virtual_tokens() const {
    const int64_t rows = embedding_->weight.size(0);
    return placement_ == PromptPlacement::kInputEmbeddings ? rows / submodules_ : rows;
  }
  PromptPlacement placement() const { return placement_; }

 private:
  torch::nn::Embedding embedding_{nullptr};
  torch::nn::Sequential transform_{nullptr};
  PromptPlacement placement_;
  models::ModelGeometry geometry_;
  int64_t submodules_ = 1;
};

}  // namespace peft::nn
