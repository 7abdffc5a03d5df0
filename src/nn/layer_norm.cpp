#include "peft/nn/layer_norm.h"

#include <torch/torch.h>

namespace peft::nn {

LayerNormImpl::LayerNormImpl(int64_t dim, double eps) : torch::nn::Module("LayerNorm"), dim_(dim), eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
  bias = register_parameter("bias", torch::zeros({dim}));
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) {
  auto norm = [&](const at::Tensor& in, const at::Tensor& w, const at::Tensor& b) {
    return at::layer_norm(in, {dim_}, w, b, eps_);
  };
  at::Tensor y = norm(x, weight, bias);
  return groups_.empty() ? y : recompute_copied_rows(groups_, x, y, weight, bias, norm);
}

}  // namespace peft::nn
