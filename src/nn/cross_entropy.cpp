#include "peft/nn/cross_entropy.h"

#include <algorithm>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {
namespace {

c10::ScalarType accumulation_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kHalf || logits.scalar_type() == at::kBFloat16 ? at::kFloat
                                                                                    : logits.scalar_type();
}

/// Rows per chunk: about 2 M values of the accumulation dtype at a time.
int64_t chunk_rows(int64_t vocab) { return std::max<int64_t>(1, (int64_t{1} << 21) / std::max<int64_t>(vocab, 1)); }

struct ChunkedCrossEntropy : torch::autograd::Function<ChunkedCrossEntropy> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& targets,
                            int64_t ignore_index) {
    const auto acc = accumulation_dtype(logits);
    const int64_t n = logits.size(0), step = chunk_rows(logits.size(1));
    at::Tensor valid = targets != ignore_index;
    at::Tensor safe_targets = torch::where(valid, targets, torch::zeros_like(targets)).to(torch::kLong);
    at::Tensor lse = torch::empty({n}, logits.options().dtype(acc));
    at::Tensor total = torch::zeros({}, logits.options().dtype(acc));
    for (int64_t r = 0; r < n; r += step) {
      const int64_t len = std::min(step, n - r);
      at::Tensor x = logits.narrow(0, r, len).to(acc);
      at::Tensor row_lse = torch::logsumexp(x, 1);
      lse.narrow(0, r, len).copy_(row_lse);
      at::Tensor picked = x.gather(1, safe_targets.narrow(0, r, len).unsqueeze(1)).squeeze(1);
      total += ((row_lse - picked) * valid.narrow(0, r, len).to(acc)).sum();
    }
    at::Tensor count = valid.sum().to(acc);
    ctx->save_for_backward({logits, safe_targets, valid, lse, count});
    return total / count;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &logits = saved[0], &targets = saved[1], &valid = saved[2], &lse = saved[3], &count = saved[4];
    const auto acc = accumulation_dtype(logits);
    const int64_t n = logits.size(0), step = chunk_rows(logits.size(1));
    at::Tensor scale = grad_out[0].to(acc) / count;
    at::Tensor grad = torch::empty_like(logits);
    for (int64_t r = 0; r < n; r += step) {
      const int64_t len = std::min(step, n - r);
      // softmax − one-hot(target), for valid rows only, times the mean's scale
      at::Tensor p = torch::exp(logits.narrow(0, r, len).to(acc) - lse.narrow(0, r, len).unsqueeze(1));
      p.scatter_add_(1, targets.narrow(0, r, len).unsqueeze(1), -torch::ones({len, 1}, p.options()));
      p.mul_((valid.narrow(0, r, len).to(acc) * scale).unsqueeze(1));
      grad.narrow(0, r, len).copy_(p);
    }
    return {grad, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor chunked_cross_entropy(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index) {
  PEFT_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0), "nn",
             "cross entropy expects logits [N, V] and targets [N], found {} and {}", c10::str(logits.sizes()),
             c10::str(targets.sizes()));
  return ChunkedCrossEntropy::apply(logits.contiguous(), targets, ignore_index);
}

}  // namespace peft::nn
