// Eager scaled-dot-product attention in the reference order of operations, shared by every
// backbone (so prefix keys/values and other attention inputs have one place to go).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "peft/nn/kv_cache.h"

namespace peft::nn {

struct AttentionOptions {
  double score_divisor = 1.0;  ///< divides q·kᵀ (sqrt(head_dim) for every family here)
  double dropout = 0.0;      ///< on the attention probabilities, only while training
  bool training = false;
  bool softmax_in_float32 = false;  ///< LLaMA: softmax in float32, then back to the input dtype
};

/// What comes before one layer's own keys and values: a prompt method's (prefix tuning), each
/// [batch, kv_heads, p, head_dim], standing for p earlier tokens (never rotated, always visible),
/// and the layer's key/value cache while decoding.
struct AttentionPrefix {
  at::Tensor key, value;
  LayerCache cache;
  int64_t length() const { return key.defined() ? key.size(2) : 0; }
};

/// `x` [b, h, t, d] with the prefix's [b, h, p, d] in front (x itself when there is none).
at::Tensor with_prefix(const at::Tensor& prefix, const at::Tensor& x);
/// The keys and values the layer attends to: the cached ones, the prefix's, then its own `key` /
/// `value` (which the cache keeps, with the prefix's, for the next step).
std::pair<at::Tensor, at::Tensor> with_past(const AttentionPrefix& prefix, const at::Tensor& key, const at::Tensor& value);

/// [batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim]
at::Tensor split_heads(const at::Tensor& x, int64_t heads, int64_t head_dim);
/// [batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim]
at::Tensor merge_heads(const at::Tensor& x);
/// Grouped-query attention: each of the kv heads serves `n_rep` query heads.
at::Tensor repeat_kv(const at::Tensor& x, int64_t n_rep);

/// softmax(q kᵀ / score_divisor + additive_mask) v for q [b, h, tq, d], k/v [b, h, tk, d];
/// `additive_mask` broadcasts to [b, h, tq, tk] (0 = attend, lowest_value = masked) or is undefined.
at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& additive_mask, const AttentionOptions& options);

/// Whether `attention` takes LibTorch's fused kernel (at::scaled_dot_product_attention: flash /
/// memory-efficient on CUDA, fused on CPU) for these options: LibTorch 2.1 or later, fused
/// attention not switched off, and the default 1/sqrt(head_dim) scaling.
bool fused_attention_applies(const AttentionOptions& options, int64_t head_dim);
/// Process-wide switch (default on) for the fused and the chunked paths; off, `attention` always
/// takes eager_attention (to compare the paths or to force the reference path).
void set_fused_attention(bool enabled);
bool fused_attention_enabled();

/// eager_attention's values, computed `max_block_bytes` of scores at a time (a block of query
/// rows); under autograd its backward recomputes each block's probabilities instead of keeping
/// [b, h, tq, tk] scores and probabilities: memory O(rows × tk), not O(tq × tk), for one more
/// q·kᵀ product in backward. Each row's arithmetic is eager_attention's, forward and backward.
at::Tensor chunked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& additive_mask, const AttentionOptions& options,
                             int64_t max_block_bytes = int64_t{4} << 20);
/// No dropout while training (its draws could not be replayed), no autocast on q's device, 4-D
/// q/k/v with the same batch and heads, and a mask that needs no gradient.
bool chunked_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& additive_mask, const AttentionOptions& options);

/// eager_attention's result: through the fused kernel where fused_attention_applies, else
/// chunked where chunked_attention_applies, else eager_attention.
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& additive_mask,
                     const AttentionOptions& options);

}  // namespace peft::nn
