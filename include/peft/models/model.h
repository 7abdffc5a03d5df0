// The interface every backbone implements: HF-named parameters, typed extension points,
// and one forward taking Hugging Face's argument names.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include "peft/models/io.h"
#include "peft/nn/adaptable_linear.h"
#include "peft/nn/attention.h"
#include "peft/nn/attention_adapters.h"
#include "peft/nn/block_adapters.h"

namespace peft::models {

class PretrainedModel : public torch::nn::Module {
 public:
  virtual ModelOutput forward(const ModelInputs& inputs) = 0;
  /// config.json's "model_type".
  virtual std::string model_type() const = 0;
  /// The Hugging Face class this model mirrors (config.json "architectures"), e.g. "GPT2LMHeadModel".
  virtual std::string architecture() const = 0;
  /// Top-level modules that form the task head ("lm_head", "classifier", "score"). A head missing
  /// from a checkpoint is newly initialized (and must be trained, e.g. via modules_to_save).
  virtual std::vector<std::string> head_modules() const { return {}; }
  /// The config as Hugging Face writes it.
  virtual nlohmann::json config_json() const = 0;
  /// Randomly initializes every weight as Hugging Face's `_init_weights` does.
  virtual void init_weights() = 0;
  /// Number of transformer blocks.
  virtual int64_t num_layers() const = 0;
  /// Encoder-decoders: the token their decoder starts from (generation feeds it first); unset for
  /// encoders and decoders.
  virtual std::optional<int64_t> decoder_start_token() const { return std::nullopt; }
  /// Width of the residual stream (what block adapters read and write).
  virtual int64_t hidden_size() const = 0;
  /// Layer counts and attention shapes.
  virtual ModelGeometry geometry() const = 0;
  /// The word-embedding matrix [vocab, hidden] (undefined for vision models).
  virtual at::Tensor input_embeddings() { return {}; }
  /// Top-level modules of the bare (feature-extraction) model that hold the blocks and the final
  /// norm: what a side network of this family keeps (its embeddings are not used). Empty: the
  /// family cannot host a side network.
  virtual std::vector<std::string> block_stack_modules() const { return {}; }
  /// The module-path segment before the layer index ("h" for GPT-2), for layers_to_transform.
  virtual std::string layers_pattern() const = 0;
  /// Checkpoint names that map onto another parameter (tied weights), e.g. lm_head.weight.
  virtual std::map<std::string, std::string> tied_weights() const { return {}; }
  /// The prefix a bare backbone checkpoint lacks (HF's base_model_prefix), e.g. "transformer".
  virtual std::string base_model_prefix() const { return {}; }
  /// Checkpoint tensors that are known to be safe to ignore (non-persistent buffers).
  virtual bool ignorable_checkpoint_key(const std::string&) const { return false; }

  /// Activation checkpointing: while training with gradients, each transformer block keeps only
  /// its inputs and recomputes its activations in backward (dropout masks replayed). Gradients
  /// are unchanged; memory falls from every block's activations to one block's.
  void set_gradient_checkpointing(bool on);
  bool gradient_checkpointing() const { return gradient_checkpointing_; }

  /// Parameters the loader initialized because the checkpoint lacked them (a new task head).
  /// They are not part of the base's identity (fingerprint): a delta carries them.
  const std::set<std::string>& newly_initialized() const { return newly_initialized_; }
  void set_newly_initialized(std::set<std::string> names) { newly_initialized_ = std::move(names); }

  /// Every AdaptableLinear with its full HF module name, in module order.
  std::vector<std::pair<std::string, nn::AdaptableLinear>> adaptable_linears();
  /// Every block's adapter slots, by the block's module name ("transformer.h.0").
  std::vector<std::pair<std::string, nn::BlockAdapters>> block_adapters();
  /// Every attention layer's extension point, by the attention module's name ("model.layers.0.self_attn").
  std::vector<std::pair<std::string, nn::AttentionAdapters>> attention_adapters();

 private:
  std::set<std::string> newly_initialized_;
  bool gradient_checkpointing_ = false;
};

}  // namespace peft::models
