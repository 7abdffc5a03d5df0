// Attention a block of query rows at a time. Eager attention keeps [b, h, tq, tk] scores and
// probabilities alive for backward (in float32 when the softmax is upcast) and makes several more
// of that size while it runs: at seq 512 with 32 heads, about 180 MiB per layer, more than the
// layer's weights in 4 bits. Here forward keeps only q, k and v, and backward recomputes each
// block's probabilities, so attention needs O(rows × tk) memory. The arithmetic per row is the
// eager path's, operation for operation, forward and backward.
#include <algorithm>

#include <torch/torch.h>

#include "peft/nn/attention.h"

#include "core/torch_compat.h"

namespace peft::nn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// The mask's rows [start, start + n) where it has one row per query, else the mask itself.
at::Tensor mask_rows(const at::Tensor& mask, int64_t start, int64_t n, int64_t tq) {
  if (!mask.defined() || mask.dim() < 2 || mask.size(-2) != tq || tq == 1) return mask;
  return mask.narrow(-2, start, n);
}

struct Block {
  at::Tensor softmax;  ///< in the softmax's dtype (float32 when upcast)
  at::Tensor probs;    ///< in q's dtype, as multiplied with v
};

Block block_probs(const at::Tensor& q_rows, const at::Tensor& k, const at::Tensor& mask, double divisor, bool upcast) {
  at::Tensor scores = torch::matmul(q_rows, k.transpose(-1, -2)) / divisor;
  if (mask.defined()) scores = scores + mask;
  Block b;
  b.softmax = upcast ? torch::softmax(scores, -1, torch::kFloat) : torch::softmax(scores, -1);
  b.probs = upcast ? b.softmax.to(q_rows.scalar_type()) : b.softmax;
  return b;
}

at::Tensor chunked_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                           double divisor, bool upcast, int64_t rows) {
  const int64_t tq = q.size(2);
  at::Tensor out = torch::empty({q.size(0), q.size(1), tq, v.size(3)}, q.options());
  for (int64_t start = 0; start < tq; start += rows) {
    const int64_t n = std::min(rows, tq - start);
    auto b = block_probs(q.narrow(2, start, n), k, mask_rows(mask, start, n, tq), divisor, upcast);
    out.narrow(2, start, n).copy_(torch::matmul(b.probs, v));
  }
  return out;
}

struct ChunkedAttention : torch::autograd::Function<ChunkedAttention> {
  // The mask is optional (an undefined tensor is no autograd input) and needs no gradient.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& optional_mask, double divisor, bool upcast, int64_t rows) {
    const at::Tensor mask = optional_mask ? *optional_mask : at::Tensor();
    ctx->save_for_backward({q, k, v});
    if (mask.defined()) ctx->saved_data["mask"] = mask;
    ctx->saved_data["divisor"] = divisor;
    ctx->saved_data["upcast"] = upcast;
    ctx->saved_data["rows"] = rows;
    return chunked_forward(q, k, v, mask, divisor, upcast, rows);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    const at::Tensor mask = ctx->saved_data.count("mask") ? ctx->saved_data["mask"].toTensor() : at::Tensor();
    const double divisor = ctx->saved_data["divisor"].toDouble();
    const bool upcast = ctx->saved_data["upcast"].toBool();
    const int64_t rows = ctx->saved_data["rows"].toInt(), tq = q.size(2);
    const at::Tensor grad_out = grads[0];
    const bool need_q = ctx->needs_input_grad(0), need_k = ctx->needs_input_grad(1), need_v = ctx->needs_input_grad(2);
    // Key and value gradients sum over blocks: accumulate half precisions in float32 (the eager
    // path sums over all rows inside one matmul).
    const auto acc = c10::elementSize(q.scalar_type()) < 4 ? torch::kFloat : q.scalar_type();
    at::Tensor gq = need_q ? torch::empty_like(q) : at::Tensor();
    at::Tensor gk = need_k ? torch::zeros(k.sizes(), k.options().dtype(acc)) : at::Tensor();
    at::Tensor gv = need_v ? torch::zeros(v.sizes(), v.options().dtype(acc)) : at::Tensor();
    for (int64_t start = 0; start < tq; start += rows) {
      const int64_t n = std::min(rows, tq - start);
      const at::Tensor q_rows = q.narrow(2, start, n), g_rows = grad_out.narrow(2, start, n);
      auto b = block_probs(q_rows, k, mask_rows(mask, start, n, tq), divisor, upcast);
      if (need_v) gv.add_(torch::matmul(b.probs.transpose(-1, -2), g_rows));
      if (!need_q && !need_k) continue;
      at::Tensor g_probs = torch::matmul(g_rows, v.transpose(-1, -2));
      // What autograd does for softmax(scores, dtype) followed by .to(q's dtype): the softmax's
      // backward in its own dtype, cast back to the scores' dtype.
      const auto sd = b.softmax.scalar_type();
      at::Tensor g_scores = at::_softmax_backward_data(g_probs.to(sd), b.softmax, -1, sd).to(q.scalar_type()) / divisor;
      if (need_q) gq.narrow(2, start, n).copy_(torch::matmul(g_scores, k));
      if (need_k) gk.add_(torch::matmul(g_scores.transpose(-1, -2), q_rows));
    }
    return {gq, need_k ? gk.to(k.scalar_type()) : gk, need_v ? gv.to(v.scalar_type()) : gv,
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool chunked_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& additive_mask, const AttentionOptions& options) {
  if (options.training && options.dropout > 0.0) return false;  // dropout draws are not replayable here
  // Under autocast the forward's products run in the autocast dtype but backward (outside it)
  // would recompute them in the inputs' own dtypes: leave those to eager autograd.
  if (core::autocast_enabled(q.device().type())) return false;
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4) return false;
  for (int d : {0, 1})
    if (k.size(d) != q.size(d) || v.size(d) != q.size(d)) return false;  // no broadcast batch / heads
  return !(additive_mask.defined() && additive_mask.requires_grad());
}

at::Tensor chunked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& additive_mask, const AttentionOptions& options,
                             int64_t max_block_bytes) {
  const bool upcast = options.softmax_in_float32 && c10::elementSize(q.scalar_type()) < 4;
  const int64_t score_bytes = upcast ? 4 : static_cast<int64_t>(c10::elementSize(q.scalar_type()));
  const int64_t row_bytes = std::max<int64_t>(1, q.size(0) * q.size(1) * k.size(2) * score_bytes);
  const int64_t rows = std::clamp<int64_t>(max_block_bytes / row_bytes, 1, std::max<int64_t>(1, q.size(2)));
  const bool records = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  if (!records) return chunked_forward(q, k, v, additive_mask, options.score_divisor, upcast, rows);
  const c10::optional<at::Tensor> mask =
      additive_mask.defined() ? c10::optional<at::Tensor>(additive_mask) : c10::optional<at::Tensor>();
  return ChunkedAttention::apply(q, k, v, mask, options.score_divisor, upcast, rows);
}

}  // namespace peft::nn
