// Encoder self-attention with separate query / key / value projections (BERT, RoBERTa, ViT
// name them exactly so); returns the merged-heads context before the output projection.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "peft/nn/adaptable_linear.h"
#include "peft/nn/attention.h"
#include "peft/nn/attention_adapters.h"

namespace peft::nn {

class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(int64_t hidden, int64_t heads, bool qkv_bias, double attention_dropout);
  /// `additive_mask` [batch, 1, 1 or seq, prefix + seq] or undefined.
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& additive_mask, const AttentionPrefix& prefix = {});

  AdaptableLinear query{nullptr};
  AdaptableLinear key{nullptr};
  AdaptableLinear value{nullptr};
  AttentionAdapters adapters{nullptr};

 private:
  int64_t heads_, head_dim_;
  double dropout_;
};
TORCH_MODULE(SelfAttention);

}  // namespace peft::nn
