// A Conv2d (ViT's patch projection) whose weight / bias an adapter may replace per row in a
// mixed-adapter batch (BitFit's trained patch bias).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include "peft/nn/row_groups.h"

namespace peft::nn {

class RoutedConv2dImpl : public torch::nn::Conv2dImpl, public RowRoutable {
 public:
  using torch::nn::Conv2dImpl::Conv2dImpl;
  at::Tensor forward(const at::Tensor& x);
  void set_row_groups(RowGroups groups) override { groups_ = std::move(groups); }

 private:
  RowGroups groups_;
};
TORCH_MODULE(RoutedConv2d);

}  // namespace peft::nn
