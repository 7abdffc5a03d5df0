#include "peft/nn/layer_norm.h"

#include <torch/torch.h>

#include "peft/nn/per_sample.h"

namespace peft::nn {

LayerNormImpl::LayerNormImpl(int64_t dim, double eps) : torch::nn::Module("LayerNorm"), dim_(dim), eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
  bias = register_parameter("bias", torch::zeros({dim}));
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) {
  auto norm = [&](const at::Tensor& in, const at::Tensor& w, const at::Tensor& b) {
    if (per_sample_recording() && (w.requires_grad() || b.requires_grad()))  // trained affine (BitFit, Houlsby)
      return recorded_add_bias(recorded_scale(at::layer_norm(in, {dim_}, {}, {}, eps_), w), b);
    return at::layer_norm(in, {dim_}, w, b, eps_);
  };
  at::Tensor y = norm(x, weight, bias);
  return groups_.empty() ? y : recompute_copied_rows(groups_, x, y, weight, bias, norm);
}

}  // namespace peft::nn
