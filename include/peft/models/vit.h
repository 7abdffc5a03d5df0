// Vision Transformer (Hugging Face ViTModel / ViTForImageClassification): convolutional patch
// embedding, [CLS] token, learned position embeddings, pre-LayerNorm blocks, final LayerNorm,
// linear classifier on the [CLS] token.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>

#include "peft/models/heads.h"
#include "peft/models/model.h"
#include "peft/nn/checkpoint.h"
#include "peft/nn/layer_norm.h"
#include "peft/nn/routed_conv2d.h"
#include "peft/nn/activations.h"
#include "peft/nn/self_attention.h"

namespace peft::models {

struct ViTConfig {
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.0;
  double attention_probs_dropout_prob = 0.0;
  double initializer_range = 0.02;
  double layer_norm_eps = 1e-12;
  int64_t image_size = 224;
  int64_t patch_size = 16;
  int64_t num_channels = 3;
  bool qkv_bias = true;
  HeadConfig head;
  nlohmann::json original;

  int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  void validate() const;
  ModelGeometry geometry() const {
    return {num_hidden_layers, hidden_size,       num_attention_heads, num_attention_heads,
            hidden_size / num_attention_heads, 0, intermediate_size, 2, num_patches() + 1};
  }
  static ViTConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

class ViTPatchEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ViTPatchEmbeddingsImpl(const ViTConfig& config);
  at::Tensor forward(const at::Tensor& pixel_values);  ///< [b, c, h, w] -> [b, patches, hidden]
  nn::RoutedConv2d projection{nullptr};

 private:
  ViTConfig config_;
};
TORCH_MODULE(ViTPatchEmbeddings);

class ViTEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ViTEmbeddingsImpl(const ViTConfig& config);
  /// [class; patches] + positions; `prompt_embeds` [batch, p, hidden] (visual prompts, no
  /// position) go right after the class token.
  at::Tensor forward(const at::Tensor& pixel_values, const at::Tensor& prompt_embeds = {});

  at::Tensor cls_token;            ///< [1, 1, hidden]
  at::Tensor position_embeddings;  ///< [1, patches + 1, hidden]
  ViTPatchEmbeddings patch_embeddings{nullptr};

 private:
  double dropout_;
};
TORCH_MODULE(ViTEmbeddings);

/// ViTSelfOutput / ViTOutput: a dense projection, dropout, and (ViTOutput) the residual add.
class ViTDenseImpl : public torch::nn::Module {
 public:
  ViTDenseImpl(int64_t in, int64_t out, double dropout);
  at::Tensor forward(const at::Tensor& x);
  nn::AdaptableLinear dense{nullptr};

 private:
  double dropout_;
};
TORCH_MODULE(ViTDense);

class ViTAttentionImpl : public torch::nn::Module {
 public:
  explicit ViTAttentionImpl(const ViTConfig& config);
  at::Tensor forward(const at::Tensor& hidden, const nn::AttentionPrefix& prefix) {
    return output->forward(attention->forward(hidden, {}, prefix));
  }
  nn::SelfAttention attention{nullptr};
  ViTDense output{nullptr};
};
TORCH_MODULE(ViTAttention);

class ViTIntermediateImpl : public torch::nn::Module {
 public:
  explicit ViTIntermediateImpl(const ViTConfig& config);
  at::Tensor forward(const at::Tensor& x) { return act_(dense->forward(x)); }
  nn::AdaptableLinear dense{nullptr};

 private:
  nn::Activation act_;
};
TORCH_MODULE(ViTIntermediate);

class ViTLayerImpl : public torch::nn::Module {
 public:
  explicit ViTLayerImpl(const ViTConfig& config);
  at::Tensor forward(const at::Tensor& hidden, const nn::AttentionPrefix& prefix);

  ViTAttention attention{nullptr};
  ViTIntermediate intermediate{nullptr};
  ViTDense output{nullptr};
  nn::LayerNorm layernorm_before{nullptr};
  nn::LayerNorm layernorm_after{nullptr};
  nn::BlockAdapters adapters{nullptr};
};
TORCH_MODULE(ViTLayer);

class ViTEncoderImpl : public torch::nn::Module {
 public:
  explicit ViTEncoderImpl(const ViTConfig& config);
  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(ViTEncoder);

class ViTPoolerImpl : public torch::nn::Module {
 public:
  explicit ViTPoolerImpl(int64_t hidden);
  at::Tensor forward(const at::Tensor& hidden);  ///< tanh(dense(hidden[:, 0]))
  nn::AdaptableLinear dense{nullptr};
};
TORCH_MODULE(ViTPooler);

class ViTModelImpl : public torch::nn::Module, public nn::BlockStack {
 public:
  ViTModelImpl(const ViTConfig& config, bool add_pooling_layer);
  /// last_hidden_state = layernorm(last block output); hidden_states exclude that final norm.
  ModelOutput forward(const ModelInputs& inputs);

  ViTEmbeddings embeddings{nullptr};
  ViTEncoder encoder{nullptr};
  nn::LayerNorm layernorm{nullptr};
  ViTPooler pooler{nullptr};

 private:
  ViTConfig config_;
};
TORCH_MODULE(ViTModel);

class ViTFamilyModel : public PretrainedModel {
 public:
  explicit ViTFamilyModel(const ViTConfig& config) : config_(config) {}
  std::string model_type() const override { return "vit"; }
  nlohmann::json config_json() const override;
  int64_t num_layers() const override { return config_.num_hidden_layers; }
  int64_t hidden_size() const override { return config_.hidden_size; }
  ModelGeometry geometry() const override;
  std::string layers_pattern() const override { return "layer"; }
  std::vector<std::string> block_stack_modules() const override { return {"encoder", "layernorm"}; }
  std::string base_model_prefix() const override { return "vit"; }
  void init_weights() override;
  const ViTConfig& config() const { return config_; }

 protected:
  ViTConfig config_;
};

/// ViTModel (with pooler), parameters without prefix.
class ViTForFeatureExtraction : public ViTFamilyModel {
 public:
  explicit ViTForFeatureExtraction(const ViTConfig& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "ViTModel"; }

 private:
  ViTModel backbone_{nullptr};
};

class ViTForImageClassification : public ViTFamilyModel {
 public:
  explicit ViTForImageClassification(const ViTConfig& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "ViTForImageClassification"; }
  std::vector<std::string> head_modules() const override { return {"classifier"}; }

  ViTModel vit{nullptr};
  nn::AdaptableLinear classifier{nullptr};
};

}  // namespace peft::models
