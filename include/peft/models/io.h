// What a backbone takes and returns, and the sizes methods read from it: the light header an
// application needs to build batches and read outputs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "peft/nn/attention.h"

namespace peft::models {

/// Forward arguments, by Hugging Face's names. Undefined tensors are absent.
struct ModelInputs {
  at::Tensor input_ids;       ///< int64 [batch, seq] (text models)
  at::Tensor attention_mask;  ///< int64/bool/float [batch, seq], 1 = attend, 0 = padding
  at::Tensor token_type_ids;  ///< int64 [batch, seq] (BERT segments); zeros when absent
  at::Tensor position_ids;    ///< int64 [batch, seq]; the model's default numbering when absent
  at::Tensor pixel_values;    ///< float [batch, channels, height, width] (vision models)
  /// Causal LM: int64 [batch, seq], -100 = ignore, shifted internally. Classification: int64
  /// [batch] class indices, or float [batch] (regression) / [batch, num_labels] (multi-label).
  at::Tensor labels;
  /// Encoder-decoders (T5): the decoder's tokens [batch, target_len], and its padding mask. Absent
  /// with labels: the labels shifted right (decoder_start_token_id first, -100 as the pad token).
  at::Tensor decoder_input_ids;
  at::Tensor decoder_attention_mask;
  /// Encoder-decoders: the encoder's last_hidden_state from an earlier forward, used instead of
  /// running the encoder again (generation encodes once); attention_mask stays the encoder's mask.
  at::Tensor encoder_outputs;
  /// With labels: loss is [batch], each example's own loss (its mean over its own tokens or
  /// labels) instead of the batch mean: what per-sample gradients (DP-SGD) differentiate.
  bool per_example_loss = false;
  bool output_hidden_states = false;

  // Set by prompt methods (PeftModel fills them; a caller may too).
  /// Virtual tokens [batch, p, hidden] put before the tokens' word embeddings (text; position,
  /// segment and mask are extended over them) or right after the class token (ViT). Outputs then
  /// cover p + seq positions; causal-LM labels get -100 for the virtual ones.
  at::Tensor prompt_embeds;
  /// One prefix per layer (see nn::AttentionPrefix), as if p tokens came before: text models
  /// number the real tokens from p, as Hugging Face does with past_key_values.
  std::vector<nn::AttentionPrefix> attention_prefix;

  /// Decoders (GPT-2, LLaMA; an encoder-decoder's decoder): keys and values of earlier positions,
  /// which this forward extends (for an encoder-decoder, decoder_input_ids are the new tokens).
  /// input_ids then holds only the new tokens; attention_mask, when given, covers only them (the
  /// cache keeps the mask of the earlier ones); positions continue after the cached ones. Prompt
  /// inputs go in with the first forward only (they become the cache's first entries). Not with
  /// gradient checkpointing while training.
  std::shared_ptr<nn::KVCache> kv_cache;

  // Hidden-state taps (side networks such as LST read the backbone through these).
  /// The embedding layer's output [batch, seq, hidden], given instead of computing it: the first
  /// block reads it as is (input_ids / pixel_values may then be absent; attention_mask applies).
  at::Tensor embedding_output;
  /// Encoder-decoders: the decoder's embedding output [batch, target_len, hidden], given instead
  /// of embedding decoder_input_ids (labels, when given, still score it).
  at::Tensor decoder_embedding_output;
  /// Called with the residual stream before block i (i < layers) and after the last block
  /// (i == layers, before any final norm); the stream continues with what it returns. An
  /// encoder-decoder numbers the encoder's boundaries 0..L_enc and the decoder's after them,
  /// L_enc + 1 + j for j = 0..L_dec.
  std::function<at::Tensor(int64_t block, const at::Tensor& stream)> stream_hook;
  /// Called with last_hidden_state before a pooler or head reads it (an encoder-decoder's: the
  /// decoder's); the model continues with what it returns.
  std::function<at::Tensor(const at::Tensor& last_hidden_state)> final_hidden_hook;
};

/// Sizes the methods need without touching weights.
struct ModelGeometry {
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  ///< grouped-query attention: fewer than num_heads
  int64_t head_dim = 0;
  int64_t vocab_size = 0;    ///< 0 for vision models
  int64_t intermediate_size = 0;  ///< the feed-forward width
  int64_t mlp_matrices = 2;       ///< feed-forward projections per block (3 for gated SwiGLU)
  int64_t max_positions = 0;      ///< the longest sequence the model takes (tokens, or patches + [CLS])
  bool encoder_decoder = false;   ///< T5: an encoder and a decoder (prompt methods feed both)
  int64_t num_decoder_layers = 0;  ///< encoder-decoders: the decoder's blocks (num_layers: the encoder's)

  /// The blocks whose self-attention takes an attention prefix: an encoder-decoder's decoder
  /// blocks (as HF PEFT feeds past_key_values to the decoder), else every block.
  int64_t prefix_layers() const { return encoder_decoder ? num_decoder_layers : num_layers; }
};

struct ModelOutput {
  at::Tensor logits;  ///< undefined for a bare backbone (feature extraction)
  at::Tensor loss;    ///< defined when labels were given
  at::Tensor last_hidden_state;
  at::Tensor pooler_output;  ///< BERT/RoBERTa/ViT backbones with a pooler
  /// With output_hidden_states: embeddings, then each block's output (HF's tuple convention); the
  /// decoder's for an encoder-decoder.
  std::vector<at::Tensor> hidden_states;
  /// Encoder-decoders: the encoder's output (after its final norm) and, with output_hidden_states,
  /// its hidden states (as hidden_states).
  at::Tensor encoder_last_hidden_state;
  std::vector<at::Tensor> encoder_hidden_states;
};

}  // namespace peft::models
