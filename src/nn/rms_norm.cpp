#include "peft/nn/rms_norm.h"

#include <torch/torch.h>

namespace peft::nn {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  // Normalize in at least float32, then scale in the input dtype (HF order).
  at::Tensor h = c10::elementSize(x.scalar_type()) < 4 ? x.to(torch::kFloat) : x;
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * torch::rsqrt(variance + eps_);
  return weight * h.to(x.scalar_type());
}

}  // namespace peft::nn
