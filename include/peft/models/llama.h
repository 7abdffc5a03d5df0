// LLaMA (Hugging Face LlamaModel / LlamaForCausalLM / LlamaForSequenceClassification): RMSNorm,
// rotary position embeddings (rope_theta, rope_scaling), SwiGLU MLP, grouped-query attention
// (num_key_value_heads), untied or tied head. Every projection is an AdaptableLinear.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>

#include "peft/models/heads.h"
#include "peft/models/model.h"
#include "peft/nn/checkpoint.h"
#include "peft/nn/activations.h"
#include "peft/nn/rms_norm.h"
#include "peft/nn/rotary.h"

namespace peft::models {

struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  ///< defaults to num_attention_heads
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 2048;
  double initializer_range = 0.02;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  double rope_theta = 10000.0;
  nn::RopeScaling rope_scaling;
  bool attention_bias = false;
  double attention_dropout = 0.0;
  HeadConfig head;
  nlohmann::json original;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  ModelGeometry geometry() const {
    return {num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads, head_dim(), vocab_size,
            intermediate_size, 3, max_position_embeddings};
  }
  void validate() const;
  static LlamaConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  explicit LlamaAttentionImpl(const LlamaConfig& config);
  /// `cos`/`sin` [batch, seq, head_dim] from the model's rotary embedding; the prefix is not rotated.
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& additive_mask, const at::Tensor& cos,
                     const at::Tensor& sin, const nn::AttentionPrefix& prefix);

  nn::AdaptableLinear q_proj{nullptr};
  nn::AdaptableLinear k_proj{nullptr};
  nn::AdaptableLinear v_proj{nullptr};
  nn::AdaptableLinear o_proj{nullptr};
  nn::AttentionAdapters adapters{nullptr};

 private:
  int64_t heads_, kv_heads_, head_dim_;
  double dropout_;
};
TORCH_MODULE(LlamaAttention);

/// SwiGLU: down(act(gate(x)) * up(x)).
class LlamaMLPImpl : public torch::nn::Module {
 public:
  explicit LlamaMLPImpl(const LlamaConfig& config);
  at::Tensor forward(const at::Tensor& x);

  nn::AdaptableLinear gate_proj{nullptr};
  nn::AdaptableLinear up_proj{nullptr};
  nn::AdaptableLinear down_proj{nullptr};

 private:
  nn::Activation act_;
};
TORCH_MODULE(LlamaMLP);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaDecoderLayerImpl(const LlamaConfig& config);
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& additive_mask, const at::Tensor& cos,
                     const at::Tensor& sin, const nn::AttentionPrefix& prefix);

  LlamaAttention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
  nn::RMSNorm input_layernorm{nullptr};
  nn::RMSNorm post_attention_layernorm{nullptr};
  nn::BlockAdapters adapters{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

class LlamaModelImpl : public torch::nn::Module, public nn::BlockStack {
 public:
  explicit LlamaModelImpl(const LlamaConfig& config);
  /// Fills last_hidden_state (after the final norm) and, when asked, hidden_states.
  ModelOutput forward(const ModelInputs& inputs);

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  nn::RMSNorm norm{nullptr};

 private:
  LlamaConfig config_;
  nn::RotaryEmbedding rotary_;
};
TORCH_MODULE(LlamaModel);

/// Shared by the LLaMA task models.
class LlamaFamilyModel : public PretrainedModel {
 public:
  explicit LlamaFamilyModel(const LlamaConfig& config) : config_(config) {}
  std::string model_type() const override { return "llama"; }
  nlohmann::json config_json() const override;
  int64_t num_layers() const override { return config_.num_hidden_layers; }
  int64_t hidden_size() const override { return config_.hidden_size; }
  ModelGeometry geometry() const override;
  std::string layers_pattern() const override { return "layers"; }
  std::vector<std::string> block_stack_modules() const override { return {"layers", "norm"}; }
  std::string base_model_prefix() const override { return "model"; }
  bool ignorable_checkpoint_key(const std::string& key) const override;
  void init_weights() override;
  const LlamaConfig& config() const { return config_; }

 protected:
  LlamaConfig config_;
};

/// LlamaModel: the bare decoder stack, parameters without prefix.
class LlamaForFeatureExtraction : public LlamaFamilyModel {
 public:
  explicit LlamaForFeatureExtraction(const LlamaConfig& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "LlamaModel"; }
  at::Tensor input_embeddings() override { return backbone_->embed_tokens->weight; }

 private:
  LlamaModel backbone_{nullptr};
};

class LlamaForCausalLM : public LlamaFamilyModel {
 public:
  explicit LlamaForCausalLM(const LlamaConfig& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "LlamaForCausalLM"; }
  std::vector<std::string> head_modules() const override { return {"lm_head"}; }
  std::map<std::string, std::string> tied_weights() const override;
  at::Tensor input_embeddings() override { return model->embed_tokens->weight; }

  LlamaModel model{nullptr};
  nn::AdaptableLinear lm_head{nullptr};  ///< only when tie_word_embeddings is false
};

/// Classifies on the last non-pad token (HF: the token before the first pad_token_id).
class LlamaForSequenceClassification : public LlamaFamilyModel {
 public:
  explicit LlamaForSequenceClassification(const LlamaConfig& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "LlamaForSequenceClassification"; }
  std::vector<std::string> head_modules() const override { return {"score"}; }
  at::Tensor input_embeddings() override { return model->embed_tokens->weight; }

  LlamaModel model{nullptr};
  nn::AdaptableLinear score{nullptr};
};

}  // namespace peft::models
