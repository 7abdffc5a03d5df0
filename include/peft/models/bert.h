// BERT and RoBERTa encoders (Hugging Face BertModel / RobertaModel and their
// *ForSequenceClassification): token-type and learned position embeddings, post-LayerNorm
// blocks, tanh pooler. RoBERTa differs only in position numbering (after padding_idx, pads keep
// padding_idx) and in its two-layer classification head.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>

#include "peft/models/heads.h"
#include "peft/models/model.h"
#include "peft/nn/checkpoint.h"
#include "peft/nn/layer_norm.h"
#include "peft/nn/activations.h"
#include "peft/nn/self_attention.h"

namespace peft::models {

struct BertConfig {
  bool roberta = false;  ///< model_type "roberta"
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  double initializer_range = 0.02;
  double layer_norm_eps = 1e-12;
  int64_t pad_token_id = 0;  ///< RoBERTa: also the position padding_idx
  HeadConfig head;
  nlohmann::json original;

  std::string model_type() const { return roberta ? "roberta" : "bert"; }
  ModelGeometry geometry() const {
    return {num_hidden_layers, hidden_size, num_attention_heads, num_attention_heads, hidden_size / num_attention_heads,
            vocab_size, intermediate_size, 2, max_position_embeddings};
  }
  void validate() const;
  static BertConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

class BertEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit BertEmbeddingsImpl(const BertConfig& config);
  /// `prompt_embeds` [batch, p, hidden] (or undefined) go before the word embeddings; `past`
  /// earlier tokens (an attention prefix) shift the default positions, as in HF.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids, const at::Tensor& position_ids,
                     const at::Tensor& prompt_embeds = {}, int64_t past = 0);

  torch::nn::Embedding word_embeddings{nullptr};
  torch::nn::Embedding position_embeddings{nullptr};
  torch::nn::Embedding token_type_embeddings{nullptr};
  nn::LayerNorm LayerNorm{nullptr};

 private:
  BertConfig config_;
};
TORCH_MODULE(BertEmbeddings);

/// dense -> dropout -> LayerNorm(x + residual): BertSelfOutput and BertOutput.
class BertResidualOutputImpl : public torch::nn::Module {
 public:
  BertResidualOutputImpl(int64_t in, int64_t out, double eps, double dropout);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& residual) { return finish(project(x), residual); }
  /// dropout(dense(x)): the sublayer output, where block adapters act.
  at::Tensor project(const at::Tensor& x);
  /// LayerNorm(h + residual)
  at::Tensor finish(const at::Tensor& h, const at::Tensor& residual);

  nn::AdaptableLinear dense{nullptr};
  nn::LayerNorm LayerNorm{nullptr};

 private:
  double dropout_;
};
TORCH_MODULE(BertResidualOutput);

class BertAttentionImpl : public torch::nn::Module {
 public:
  explicit BertAttentionImpl(const BertConfig& config);
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& additive_mask);

  nn::SelfAttention self{nullptr};
  BertResidualOutput output{nullptr};
};
TORCH_MODULE(BertAttention);

class BertIntermediateImpl : public torch::nn::Module {
 public:
  BertIntermediateImpl(int64_t hidden, int64_t intermediate, const std::string& act);
  at::Tensor forward(const at::Tensor& x) { return act_(dense->forward(x)); }

  nn::AdaptableLinear dense{nullptr};

 private:
  nn::Activation act_;
};
TORCH_MODULE(BertIntermediate);

class BertLayerImpl : public torch::nn::Module {
 public:
  explicit BertLayerImpl(const BertConfig& config);
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& additive_mask, const nn::AttentionPrefix& prefix);

  BertAttention attention{nullptr};
  BertIntermediate intermediate{nullptr};
  BertResidualOutput output{nullptr};
  nn::BlockAdapters adapters{nullptr};
};
TORCH_MODULE(BertLayer);

class BertEncoderImpl : public torch::nn::Module {
 public:
  explicit BertEncoderImpl(const BertConfig& config);
  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(BertEncoder);

class BertPoolerImpl : public torch::nn::Module {
 public:
  explicit BertPoolerImpl(int64_t hidden);
  at::Tensor forward(const at::Tensor& hidden);  ///< tanh(dense(hidden[:, 0]))
  nn::AdaptableLinear dense{nullptr};
};
TORCH_MODULE(BertPooler);

/// The encoder stack: embeddings, encoder, optional pooler.
class BertModelImpl : public torch::nn::Module, public nn::BlockStack {
 public:
  BertModelImpl(const BertConfig& config, bool add_pooling_layer);
  /// Fills last_hidden_state, pooler_output and (optionally) hidden_states.
  ModelOutput forward(const ModelInputs& inputs);

  BertEmbeddings embeddings{nullptr};
  BertEncoder encoder{nullptr};
  BertPooler pooler{nullptr};

 private:
  BertConfig config_;
};
TORCH_MODULE(BertModel);

/// Shared by the BERT/RoBERTa task models.
class BertFamilyModel : public PretrainedModel {
 public:
  explicit BertFamilyModel(const BertConfig& config) : config_(config) {}
  std::string model_type() const override { return config_.model_type(); }
  nlohmann::json config_json() const override;
  int64_t num_layers() const override { return config_.num_hidden_layers; }
  int64_t hidden_size() const override { return config_.hidden_size; }
  ModelGeometry geometry() const override;
  std::string layers_pattern() const override { return "layer"; }
  std::vector<std::string> block_stack_modules() const override { return {"encoder"}; }
  std::string base_model_prefix() const override { return config_.model_type(); }
  bool ignorable_checkpoint_key(const std::string& key) const override;
  void init_weights() override;
  const BertConfig& config() const { return config_; }

 protected:
  BertConfig config_;
};

/// BertModel / RobertaModel: the bare encoder (feature extraction), parameters without prefix.
class BertForFeatureExtraction : public BertFamilyModel {
 public:
  explicit BertForFeatureExtraction(const BertConfig& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return config_.roberta ? "RobertaModel" : "BertModel"; }
  at::Tensor input_embeddings() override { return backbone_->embeddings->word_embeddings->weight; }

 private:
  BertModel backbone_{nullptr};
};

/// RoBERTa's head: dropout -> dense -> tanh -> dropout -> out_proj, on the first token.
class RobertaClassificationHeadImpl : public torch::nn::Module {
 public:
  RobertaClassificationHeadImpl(int64_t hidden, int64_t num_labels, double dropout);
  at::Tensor forward(const at::Tensor& hidden);
  nn::AdaptableLinear dense{nullptr};
  nn::AdaptableLinear out_proj{nullptr};

 private:
  double dropout_;
};
TORCH_MODULE(RobertaClassificationHead);

/// BertForSequenceClassification (pooler -> dropout -> classifier) and
/// RobertaForSequenceClassification (no pooler; RobertaClassificationHead).
class BertForSequenceClassification : public BertFamilyModel {
 public:
  explicit BertForSequenceClassification(const BertConfig& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override {
    return config_.roberta ? "RobertaForSequenceClassification" : "BertForSequenceClassification";
  }
  std::vector<std::string> head_modules() const override { return {"classifier"}; }
  at::Tensor input_embeddings() override { return backbone->embeddings->word_embeddings->weight; }

  BertModel backbone{nullptr};                         ///< registered as "bert" or "roberta"
  nn::AdaptableLinear classifier{nullptr};             ///< BERT
  RobertaClassificationHead roberta_classifier{nullptr};  ///< RoBERTa (registered as "classifier")
};

}  // namespace peft::models
