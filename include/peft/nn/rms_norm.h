// RMSNorm (LLaMA): x / sqrt(mean(x²) + eps) · weight, computed in (at least) float32 like the reference.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "peft/nn/row_groups.h"

namespace peft::nn {

class RMSNormImpl : public torch::nn::Module, public RowRoutable {
 public:
  RMSNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x);
  void set_row_groups(RowGroups groups) override { groups_ = std::move(groups); }

  at::Tensor weight;

 private:
  at::Tensor normalize(const at::Tensor& x, const at::Tensor& weight) const;
  double eps_;
  RowGroups groups_;
};
TORCH_MODULE(RMSNorm);

}  // namespace peft::nn
