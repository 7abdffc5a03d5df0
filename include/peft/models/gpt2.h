// GPT-2 (Hugging Face GPT2LMHeadModel): parameter names, Conv1D [in, out] layout, tied
// lm_head, pre-LayerNorm blocks, learned positions. Every projection is an AdaptableLinear.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>

#include "peft/models/heads.h"
#include "peft/models/model.h"
#include "peft/nn/checkpoint.h"
#include "peft/nn/layer_norm.h"
#include "peft/nn/activations.h"

namespace peft::models {

struct GPT2Config {
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  std::optional<int64_t> n_inner;  ///< default 4 * n_embd
  std::string activation_function = "gelu_new";
  double resid_pdrop = 0.1;
  double embd_pdrop = 0.1;
  double attn_pdrop = 0.1;
  double layer_norm_epsilon = 1e-5;
  double initializer_range = 0.02;
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  bool tie_word_embeddings = true;
  HeadConfig head;  ///< sequence classification: num_labels, pad_token_id (GPT-2 has none by default)
  nlohmann::json original;  ///< the config.json it was read from (kept for round trips)

  int64_t inner_dim() const { return n_inner.value_or(4 * n_embd); }
  ModelGeometry geometry() const {
    return {n_layer, n_embd, n_head, n_head, n_embd / n_head, vocab_size, inner_dim(), 2, n_positions};
  }
  void validate() const;
  /// Reads HF's config.json fields; unrelated HF keys are kept in `original` and ignored.
  static GPT2Config from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

class GPT2AttentionImpl : public torch::nn::Module {
 public:
  GPT2AttentionImpl(const GPT2Config& config, int64_t layer_idx);
  /// `additive_mask`: [batch, 1, 1, prefix + seq] (0 or the dtype's min) or undefined.
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& additive_mask, const nn::AttentionPrefix& prefix);

  nn::AdaptableLinear c_attn{nullptr};
  nn::AdaptableLinear c_proj{nullptr};
  nn::AttentionAdapters adapters{nullptr};

 private:
  int64_t n_head_, head_dim_, layer_idx_;
  bool scale_, scale_by_layer_;
  double attn_pdrop_, resid_pdrop_;
};
TORCH_MODULE(GPT2Attention);

class GPT2MLPImpl : public torch::nn::Module {
 public:
  explicit GPT2MLPImpl(const GPT2Config& config);
  at::Tensor forward(const at::Tensor& x);

  nn::AdaptableLinear c_fc{nullptr};
  nn::AdaptableLinear c_proj{nullptr};

 private:
  nn::Activation act_;
  double resid_pdrop_;
};
TORCH_MODULE(GPT2MLP);

class GPT2BlockImpl : public torch::nn::Module {
 public:
  GPT2BlockImpl(const GPT2Config& config, int64_t layer_idx);
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& additive_mask, const nn::AttentionPrefix& prefix);

  nn::LayerNorm ln_1{nullptr};
  GPT2Attention attn{nullptr};
  nn::LayerNorm ln_2{nullptr};
  GPT2MLP mlp{nullptr};
  nn::BlockAdapters adapters{nullptr};
};
TORCH_MODULE(GPT2Block);

class GPT2ModelImpl : public torch::nn::Module, public nn::BlockStack {
 public:
  explicit GPT2ModelImpl(const GPT2Config& config);
  /// Fills last_hidden_state (after ln_f) and, when asked, hidden_states.
  ModelOutput forward(const ModelInputs& inputs);

  torch::nn::Embedding wte{nullptr};
  torch::nn::Embedding wpe{nullptr};
  torch::nn::ModuleList h{nullptr};
  nn::LayerNorm ln_f{nullptr};

 private:
  GPT2Config config_;
};
TORCH_MODULE(GPT2Model);

/// Shared by the GPT-2 task models.
class GPT2FamilyModel : public PretrainedModel {
 public:
  explicit GPT2FamilyModel(const GPT2Config& config) : config_(config) {}
  std::string model_type() const override { return "gpt2"; }
  nlohmann::json config_json() const override;
  void init_weights() override;
  int64_t num_layers() const override { return config_.n_layer; }
  int64_t hidden_size() const override { return config_.n_embd; }
  ModelGeometry geometry() const override;
  std::string layers_pattern() const override { return "h"; }
  std::vector<std::string> block_stack_modules() const override { return {"h", "ln_f"}; }
  std::string base_model_prefix() const override { return "transformer"; }
  bool ignorable_checkpoint_key(const std::string& key) const override;
  const GPT2Config& config() const { return config_; }

 protected:
  GPT2Config config_;
};

/// GPT2Model: the bare decoder stack, parameters without prefix.
class GPT2ForFeatureExtraction : public GPT2FamilyModel {
 public:
  explicit GPT2ForFeatureExtraction(const GPT2Config& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "GPT2Model"; }
  at::Tensor input_embeddings() override { return backbone_->wte->weight; }

 private:
  GPT2Model backbone_{nullptr};
};

class GPT2LMHeadModel : public GPT2FamilyModel {
 public:
  explicit GPT2LMHeadModel(const GPT2Config& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "GPT2LMHeadModel"; }
  std::vector<std::string> head_modules() const override { return {"lm_head"}; }
  std::map<std::string, std::string> tied_weights() const override;
  at::Tensor input_embeddings() override { return transformer->wte->weight; }

  GPT2Model transformer{nullptr};
  nn::AdaptableLinear lm_head{nullptr};  ///< only when tie_word_embeddings is false
};

/// Classifies on the last non-pad token (HF: the token before the first pad_token_id).
class GPT2ForSequenceClassification : public GPT2FamilyModel {
 public:
  explicit GPT2ForSequenceClassification(const GPT2Config& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "GPT2ForSequenceClassification"; }
  std::vector<std::string> head_modules() const override { return {"score"}; }
  at::Tensor input_embeddings() override { return transformer->wte->weight; }

  GPT2Model transformer{nullptr};
  nn::AdaptableLinear score{nullptr};
};

}  // namespace peft::models
