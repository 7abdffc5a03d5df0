// T5 / T5 v1.1 / Flan-T5 (Hugging Face T5ForConditionalGeneration, T5Model, T5EncoderModel): an
// encoder and a decoder of pre-norm blocks with RMS-style T5LayerNorm and no biases, relative
// position buckets (bidirectional in the encoder, causal in the decoder; computed by each stack's
// first layer and shared by the rest), no score scaling, cross-attention in the decoder, ReLU or
// gated feed-forward (feed_forward_proj), tied or untied head (tied: the decoder output is scaled
// by d_model^-0.5 first). Every projection is an AdaptableLinear; each block has the attention and
// feed-forward slots.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>

#include "peft/models/model.h"
#include "peft/nn/activations.h"
#include "peft/nn/checkpoint.h"
#include "peft/nn/kv_cache.h"
#include "peft/nn/rms_norm.h"

namespace peft::models {

struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 512;
  int64_t d_kv = 64;
  int64_t d_ff = 2048;
  int64_t num_layers = 6;
  int64_t num_decoder_layers = 6;  ///< defaults to num_layers
  int64_t num_heads = 8;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double dropout_rate = 0.1;
  double layer_norm_epsilon = 1e-6;
  double initializer_factor = 1.0;
  std::string feed_forward_proj = "relu";  ///< "relu", "gated-gelu", "gated-silu", ...
  bool tie_word_embeddings = true;
  int64_t decoder_start_token_id = 0;
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 1;
  nlohmann::json original;

  /// The feed-forward activation (HF: the last part of feed_forward_proj; "gated-gelu" is gelu_new).
  std::string activation() const;
  bool gated() const;
  ModelGeometry geometry() const;
  void validate() const;
  static T5Config from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

/// HF's T5 bucketing of relative positions (key − query).
at::Tensor t5_relative_position_bucket(const at::Tensor& relative_position, bool bidirectional, int64_t num_buckets,
                                       int64_t max_distance);

class T5AttentionImpl : public torch::nn::Module {
 public:
  /// `cross`: keys and values come from the encoder's output (EncDecAttention).
  T5AttentionImpl(const T5Config& config, bool has_relative_attention_bias, bool causal, bool cross = false);
  /// softmax(q kᵀ + position_bias) v; keys and values from `key_value_states` (cross-attention; it
  /// may be undefined once the cache holds them) or `hidden`. `position_bias` [1 or batch, heads,
  /// q, k] already holds the mask. With `cache`,
  /// self-attention appends its keys to layer `layer`'s and cross-attention computes its keys once.
  /// A `prefix` (prefix tuning, self-attention only) puts its keys and values before this forward's.
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& key_value_states, const at::Tensor& position_bias,
                     nn::KVCache* cache = nullptr, size_t layer = 0, const nn::AttentionPrefix& prefix = {});
  /// The learned bias [1, heads, query_len, key_len] for queries at positions first_query.. (first
  /// layer of a stack only).
  at::Tensor compute_bias(int64_t query_len, int64_t key_len, c10::Device device, int64_t first_query = 0);
  bool has_relative_attention_bias() const { return relative_attention_bias.get() != nullptr; }

  nn::AdaptableLinear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  torch::nn::Embedding relative_attention_bias{nullptr};

 private:
  bool cross_;
  int64_t heads_, d_kv_, buckets_, max_distance_;
  bool causal_;
  double dropout_;
};
TORCH_MODULE(T5Attention);

/// One sublayer: pre-norm, the sublayer, dropout, residual (SelfAttention / EncDecAttention /
/// DenseReluDense under HF's names).
class T5LayerSelfAttentionImpl : public torch::nn::Module {
 public:
  T5LayerSelfAttentionImpl(const T5Config& config, bool has_relative_attention_bias, bool causal);
  T5Attention SelfAttention{nullptr};
  nn::RMSNorm layer_norm{nullptr};
};
TORCH_MODULE(T5LayerSelfAttention);

class T5LayerCrossAttentionImpl : public torch::nn::Module {
 public:
  explicit T5LayerCrossAttentionImpl(const T5Config& config);
  T5Attention EncDecAttention{nullptr};
  nn::RMSNorm layer_norm{nullptr};
};
TORCH_MODULE(T5LayerCrossAttention);

class T5DenseImpl : public torch::nn::Module {
 public:
  explicit T5DenseImpl(const T5Config& config);
  at::Tensor forward(const at::Tensor& x);
  nn::AdaptableLinear wi{nullptr}, wi_0{nullptr}, wi_1{nullptr}, wo{nullptr};  ///< wi, or wi_0 / wi_1 (gated)

 private:
  nn::Activation act_;
  double dropout_;
};
TORCH_MODULE(T5Dense);

class T5LayerFFImpl : public torch::nn::Module {
 public:
  explicit T5LayerFFImpl(const T5Config& config);
  T5Dense DenseReluDense{nullptr};
  nn::RMSNorm layer_norm{nullptr};
};
TORCH_MODULE(T5LayerFF);

class T5BlockImpl : public torch::nn::Module {
 public:
  T5BlockImpl(const T5Config& config, bool is_decoder, bool has_relative_attention_bias);
  /// `self_bias` / `cross_bias` hold the position bias and the masks; `cache` (decoder) holds
  /// layer `index`'s keys and values.
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& self_bias, const at::Tensor& encoder_hidden,
                     const at::Tensor& cross_bias, nn::KVCache* cache = nullptr, size_t index = 0,
                     const nn::AttentionPrefix& prefix = {});

  torch::nn::ModuleList layer{nullptr};  ///< self-attention, [cross-attention,] feed-forward
  nn::BlockAdapters adapters{nullptr};

 private:
  bool is_decoder_;
  double dropout_;
};
TORCH_MODULE(T5Block);

struct T5StackOutput {
  at::Tensor last_hidden_state;
  std::vector<at::Tensor> hidden_states;
  /// The encoder's: the mask over its positions, virtual tokens included (undefined: all attended).
  at::Tensor attention_mask;
};

/// A stack's hidden-state taps (ModelInputs::stream_hook, numbered from `first`).
struct T5StackTaps {
  std::function<at::Tensor(int64_t block, const at::Tensor& stream)> hook;
  int64_t first = 0;
  bool embeddings_given = false;  ///< a caller's embedding output: no embedding dropout
};

class T5StackImpl : public torch::nn::Module, public nn::BlockStack {
 public:
  T5StackImpl(const T5Config& config, bool is_decoder);
  /// `embeddings` [batch, seq, d_model]; the decoder also takes the encoder's output and mask, and
  /// a key/value cache (the new positions follow the cached ones) and one prefix per layer (its p
  /// keys come first: the tokens are numbered from p, as HF does with past_key_values).
  /// `owner`: the model holding both stacks; checkpointed blocks route gradients to all its
  /// trainable tensors, as a delta's tensor shared by every block lives under one stack only.
  T5StackOutput forward(const at::Tensor& embeddings, const at::Tensor& attention_mask, const at::Tensor& encoder_hidden,
                        const at::Tensor& encoder_mask, bool output_hidden_states, nn::KVCache* cache = nullptr,
                        const std::vector<nn::AttentionPrefix>& prefix = {}, const torch::nn::Module* owner = nullptr,
                        const T5StackTaps& taps = {});

  torch::nn::ModuleList block{nullptr};
  nn::RMSNorm final_layer_norm{nullptr};

 private:
  bool is_decoder_;
  double dropout_;
};
TORCH_MODULE(T5Stack);

/// Shared by the T5 models: `shared` embeddings, the encoder (and decoder).
class T5FamilyModel : public PretrainedModel {
 public:
  T5FamilyModel(const T5Config& config, bool with_decoder);
  std::string model_type() const override { return "t5"; }
  nlohmann::json config_json() const override;
  int64_t num_layers() const override { return config_.num_layers; }
  std::optional<int64_t> decoder_start_token() const override {
    return decoder ? std::optional<int64_t>(config_.decoder_start_token_id) : std::nullopt;
  }
  int64_t hidden_size() const override { return config_.d_model; }
  ModelGeometry geometry() const override { return config_.geometry(); }
  std::string layers_pattern() const override { return "block"; }
  std::string base_model_prefix() const override { return "transformer"; }
  std::map<std::string, std::string> tied_weights() const override;
  bool ignorable_checkpoint_key(const std::string& key) const override;
  void init_weights() override;
  at::Tensor input_embeddings() override { return shared->weight; }
  std::vector<std::string> block_stack_modules() const override {
    return decoder ? std::vector<std::string>{"encoder", "decoder"} : std::vector<std::string>{"encoder"};
  }
  const T5Config& config() const { return config_; }

  torch::nn::Embedding shared{nullptr};
  T5Stack encoder{nullptr};
  T5Stack decoder{nullptr};  ///< null for T5EncoderModel

 protected:
  /// The encoder's output for `inputs` (prompt_embeds before the tokens, or embedding_output
  /// instead of embedding them; its hidden states when asked), or inputs.encoder_outputs (leading
  /// positions past input_ids' are virtual tokens).
  T5StackOutput encode(const ModelInputs& inputs);
  /// The decoder's output given the encoder's; decoder inputs from decoder_embedding_output,
  /// decoder_input_ids or shifted labels; the attention prefix (prefix tuning) enters the
  /// decoder's self-attention.
  T5StackOutput decode(const ModelInputs& inputs, const T5StackOutput& encoded);
  /// HF's _shift_right: decoder_start_token_id first, -100 replaced by pad_token_id.
  at::Tensor shift_right(const at::Tensor& labels) const;

  T5Config config_;
};

class T5ForConditionalGeneration : public T5FamilyModel {
 public:
  explicit T5ForConditionalGeneration(const T5Config& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "T5ForConditionalGeneration"; }
  std::vector<std::string> head_modules() const override { return {"lm_head"}; }

  nn::AdaptableLinear lm_head{nullptr};  ///< only when tie_word_embeddings is false
};

/// T5Model: encoder and decoder without the head (last_hidden_state is the decoder's).
class T5Model : public T5FamilyModel {
 public:
  explicit T5Model(const T5Config& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "T5Model"; }
};

/// T5EncoderModel: the encoder alone (a full checkpoint's decoder and head are ignored).
class T5EncoderModel : public T5FamilyModel {
 public:
  explicit T5EncoderModel(const T5Config& config);
  ModelOutput forward(const ModelInputs& inputs) override;
  std::string architecture() const override { return "T5EncoderModel"; }
};

}  // namespace peft::models
