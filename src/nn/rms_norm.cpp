#include "peft/nn/rms_norm.h"

#include <torch/torch.h>

#include "peft/nn/per_sample.h"

namespace peft::nn {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

at::Tensor RMSNormImpl::normalize(const at::Tensor& x, const at::Tensor& w) const {
  // Normalize in at least float32, then scale in the input dtype (HF order).
  at::Tensor h = c10::elementSize(x.scalar_type()) < 4 ? x.to(torch::kFloat) : x;
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * torch::rsqrt(variance + eps_);
  if (per_sample_recording()) return recorded_scale(h.to(x.scalar_type()), w);
  return w * h.to(x.scalar_type());
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  at::Tensor y = normalize(x, weight);
  if (groups_.empty()) return y;
  return recompute_copied_rows(groups_, x, y, weight, at::Tensor(),
                               [&](const at::Tensor& in, const at::Tensor& w, const at::Tensor&) { return normalize(in, w); });
}

}  // namespace peft::nn
