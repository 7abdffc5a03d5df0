// LayerNorm over the last dimension with weight and bias (Hugging Face's nn.LayerNorm), whose
// weight / bias an adapter may replace per row in a mixed-adapter batch.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "peft/nn/row_groups.h"

namespace peft::nn {

class LayerNormImpl : public torch::nn::Module, public RowRoutable {
 public:
  LayerNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x);
  void set_row_groups(RowGroups groups) override { groups_ = std::move(groups); }

  at::Tensor weight;
  at::Tensor bias;

 private:
  int64_t dim_;
  double eps_;
  RowGroups groups_;
};
TORCH_MODULE(LayerNorm);

}  // namespace peft::nn
