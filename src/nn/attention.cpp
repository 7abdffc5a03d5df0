#include "peft/nn/attention.h"

#include <atomic>
#include <cmath>

#include <torch/torch.h>

#include "core/torch_compat.h"

namespace peft::nn {

at::Tensor split_heads(const at::Tensor& x, int64_t heads, int64_t head_dim) {
  return x.view({x.size(0), x.size(1), heads, head_dim}).transpose(1, 2);
}

at::Tensor merge_heads(const at::Tensor& x) {
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), x.size(1) * x.size(3)});
}

at::Tensor with_prefix(const at::Tensor& prefix, const at::Tensor& x) {
  return prefix.defined() ? torch::cat({prefix.to(x.scalar_type()), x}, 2) : x;
}

std::pair<at::Tensor, at::Tensor> with_past(const AttentionPrefix& prefix, const at::Tensor& key, const at::Tensor& value) {
  return prefix.cache.extend(with_prefix(prefix.key, key), with_prefix(prefix.value, value));
}

at::Tensor repeat_kv(const at::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) return x;
  const int64_t b = x.size(0), h = x.size(1), t = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, h, n_rep, t, d}).reshape({b, h * n_rep, t, d});
}

at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& additive_mask, const AttentionOptions& options) {
  // Scores are divided after the product, as every Hugging Face eager implementation does.
  at::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / options.score_divisor;
  if (additive_mask.defined()) scores = scores + additive_mask;
  // Upcast half precisions only: float64 stays float64 (gradient checks rely on it).
  const bool upcast = options.softmax_in_float32 && c10::elementSize(scores.scalar_type()) < 4;
  at::Tensor probs = upcast ? torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type()) : torch::softmax(scores, -1);
  if (options.dropout > 0.0 && options.training) probs = torch::dropout(probs, options.dropout, true);
  return torch::matmul(probs, v);
}

namespace {
std::atomic<bool> g_fused{true};
}

void set_fused_attention(bool enabled) { g_fused = enabled; }
bool fused_attention_enabled() { return g_fused; }

bool fused_attention_applies(const AttentionOptions& options, int64_t head_dim) {
  const double default_divisor = std::sqrt(static_cast<double>(head_dim));
  return g_fused && core::has_fused_attention() && std::abs(options.score_divisor - default_divisor) <= 1e-9 * default_divisor;
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& additive_mask,
                     const AttentionOptions& options) {
  if (fused_attention_applies(options, q.size(-1)))
    return core::fused_attention(q, k, v, additive_mask, options.training ? options.dropout : 0.0);
  if (g_fused && chunked_attention_applies(q, k, v, additive_mask, options))
    return chunked_attention(q, k, v, additive_mask, options);
  return eager_attention(q, k, v, additive_mask, options);
}

}  // namespace peft::nn
