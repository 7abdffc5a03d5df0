// How every backbone takes the prompt methods' inputs (ModelInputs::prompt_embeds and
// ::attention_prefix): shape checks, and the mask / label / position extensions they imply.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>

#include "peft/models/model.h"

namespace peft::models {

struct PromptLengths {
  int64_t virtual_tokens = 0;  ///< prompt_embeds' p: extra positions in the sequence
  int64_t prefix = 0;          ///< attention_prefix's p: extra keys in every layer
};

/// Checks prompt_embeds ([batch, p, hidden]) and attention_prefix (one per layer, [batch,
/// kv_heads, p, head_dim] keys and values) against the model; errors name `component`.
PromptLengths check_prompt_inputs(const ModelInputs& inputs, int64_t batch, const ModelGeometry& geometry,
                                  const std::string& component);
/// The word embeddings with the virtual tokens in front (`embeds` when there are none).
at::Tensor prepend_prompt(const at::Tensor& prompt_embeds, const at::Tensor& embeds);
/// `leading` ones (always attended) before `mask` [batch, seq]; undefined stays undefined.
at::Tensor extend_mask(const at::Tensor& mask, int64_t leading);
/// `leading` copies of `value` before `x` [batch, seq] (segment ids 0, ignored labels -100).
at::Tensor prepend_constant(const at::Tensor& x, int64_t leading, int64_t value);
/// [batch, len] positions offset, offset + 1, ... (the default numbering after `offset` earlier tokens).
at::Tensor default_positions(int64_t batch, int64_t len, int64_t offset, c10::Device device);
/// prompt_embeds' p (0 without).
inline int64_t virtual_tokens(const ModelInputs& inputs) {
  return inputs.prompt_embeds.defined() ? inputs.prompt_embeds.size(1) : 0;
}
/// Causal-LM labels over the whole sequence: -100 (ignored) for the virtual tokens.
at::Tensor lm_labels(const ModelInputs& inputs);
/// Whether the stream starts from ModelInputs::embedding_output; checks it ([batch, seq, hidden],
/// attention_mask [batch, seq], no prompt inputs beside it).
bool given_embedding_output(const ModelInputs& inputs, const ModelGeometry& geometry, const std::string& component);
/// The stream after ModelInputs::stream_hook at `block` (unchanged without a hook).
inline at::Tensor tap_stream(const ModelInputs& inputs, int64_t block, const at::Tensor& stream) {
  return inputs.stream_hook ? inputs.stream_hook(block, stream) : stream;
}
/// last_hidden_state after ModelInputs::final_hidden_hook.
inline at::Tensor tap_final(const ModelInputs& inputs, const at::Tensor& last_hidden_state) {
  return inputs.final_hidden_hook ? inputs.final_hidden_hook(last_hidden_state) : last_hidden_state;
}
/// The layer's prefix (or an empty one) with its handle on the key/value cache, if any.
nn::AttentionPrefix layer_prefix(const ModelInputs& inputs, size_t layer);
/// Key positions the cache already holds (0 without one).
inline int64_t cached_positions(const ModelInputs& inputs) { return inputs.kv_cache ? inputs.kv_cache->length() : 0; }
/// The key mask [batch, cached + leading + seq] of a decoder forward: the cache's, `leading`
/// always-attended prompt positions, then attention_mask (or ones); undefined when every key is
/// attended. Registers the new positions with the cache.
at::Tensor decoder_key_mask(const ModelInputs& inputs, int64_t batch, int64_t leading, int64_t seq, int64_t layers);
/// [batch, leading + seq] positions: the prompt's `leading` from `offset` on, then position_ids
/// ([batch, seq], checked; errors name `component`) or the default numbering after them.
at::Tensor decoder_positions(const ModelInputs& inputs, int64_t batch, int64_t leading, int64_t seq, int64_t offset,
                             c10::Device device, const std::string& component);
/// Refuses a key/value cache for a model that is not a decoder, or under gradient checkpointing.
void check_cache_use(const ModelInputs& inputs, bool decoder, bool checkpointing, const std::string& component);

}  // namespace peft::models
