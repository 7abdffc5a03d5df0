#include "peft/nn/routed_conv2d.h"

#include <torch/torch.h>

namespace peft::nn {

at::Tensor RoutedConv2dImpl::forward(const at::Tensor& x) {
  at::Tensor y = torch::nn::Conv2dImpl::forward(x);
  if (groups_.empty()) return y;
  return recompute_copied_rows(groups_, x, y, weight, bias, [&](const at::Tensor& in, const at::Tensor& w, const at::Tensor& b) {
    // The module's own forward (padding modes and all) with the group's tensors in its members.
    struct Restore {
      RoutedConv2dImpl& m;
      at::Tensor weight, bias;
      ~Restore() {
        m.weight = weight;
        m.bias = bias;
      }
    } restore{*this, weight, bias};
    weight = w;
    bias = b;
    return torch::nn::Conv2dImpl::forward(in);
  });
}

}  // namespace peft::nn
