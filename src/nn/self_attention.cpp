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
  query = register_module("query", AdaptableLinear(AdaptableLinearOptions(hidden, hidden).bias(qkv_bias)));
  key = register_module("key", AdaptableLinear(AdaptableLinearOptions(hidden, hidden).bias(qkv_bias)));
  value = register_module("value", AdaptableLinear(AdaptableLinearOptions(hidden, hidden).bias(qkv_bias)));
  adapters = register_module("adapters", AttentionAdapters());
}

at::Tensor SelfAttentionImpl::forward(const at::Tensor& hidden, const at::Tensor& additive_mask,
                                      const AttentionPrefix& prefix) {
  auto heads = [&](const at::Tensor& t) { return split_heads(t, heads_, head_dim_); };
  at::Tensor q = heads(query->forward(hidden));
  at::Tensor k = with_prefix(prefix.key, heads(key->forward(hidden)));
  at::Tensor v = with_prefix(prefix.value, heads(value->forward(hidden)));
  AttentionOptions opts;
  opts.score_divisor = std::sqrt(static_cast<double>(head_dim_));
  opts.dropout = dropout_;
  opts.training = is_training();
  at::Tensor context = attention(q, k, v, additive_mask, opts);
  if (adapters->any_active()) {
    AttentionView view;
    view.queries = q;
    view.score_divisor = opts.score_divisor;
    view.key_value = [&](const at::Tensor& x) { return std::make_pair(heads(key->forward(x)), heads(value->forward(x))); };
    context = adapters->apply(context, view);
  }
  return merge_heads(context);
}

}  // namespace peft::nn
