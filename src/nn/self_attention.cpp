#include "peft/nn/self_attention.h"

#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/nn/attention.h"

namespace peft::nn {

SelfAttentionImpl::SelfAttentionImpl(int64_t hidden, int64_t heads, bool qkv_bias, double attention_dropout)
    : heads_(heads), head_dim_(hidden / heads), dropout_(attention_dropout) {
  PEFT_CHECK(heads > 0 && hidden % heads == 0, "nn", "hidden size {} is not a multiple of the number of heads {}",
             hidden, heads);
  query = register_module("query", AdaptableLinear(hidden, hidden, qkv_bias, false));
  key = register_module("key", AdaptableLinear(hidden, hidden, qkv_bias, false));
  value = register_module("value", AdaptableLinear(hidden, hidden, qkv_bias, false));
}

at::Tensor SelfAttentionImpl::forward(const at::Tensor& hidden, const at::Tensor& additive_mask) {
  at::Tensor q = split_heads(query->forward(hidden), heads_, head_dim_);
  at::Tensor k = split_heads(key->forward(hidden), heads_, head_dim_);
  at::Tensor v = split_heads(value->forward(hidden), heads_, head_dim_);
  AttentionOptions opts;
  opts.score_divisor = std::sqrt(static_cast<double>(head_dim_));
  opts.dropout = dropout_;
  opts.training = is_training();
  return merge_heads(eager_attention(q, k, v, additive_mask, opts));
}

}  // namespace peft::nn
