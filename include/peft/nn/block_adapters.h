// The block-slot extension point: every transformer block passes each sublayer's output
// (attention, feed-forward, and an encoder-decoder's cross-attention in its decoder blocks; before
// the residual add) through the sublayer adapters attached to it. Sequential adapters transform that output; parallel ones add what they compute from the
// sublayer's input. Bottleneck adapters, AdaMix, SparseAdapter and Compacter live here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "peft/nn/adapter_holder.h"

namespace peft::nn {

class SublayerAdapter : public torch::nn::Module {
 public:
  /// `input`: what the sublayer read; `output`: what it produced. Returns the new output.
  virtual at::Tensor forward(const at::Tensor& input, const at::Tensor& output) = 0;
};

class BlockAdaptersImpl : public AdapterHolder {
 public:
  BlockAdaptersImpl() : AdapterHolder("BlockAdapters") {}
  /// The slots a block may offer: every block offers attention and ffn; decoder blocks of an
  /// encoder-decoder also cross_attention.
  static const std::vector<std::string>& slots();  // {"attention", "cross_attention", "ffn"}
  /// Called by a block that has a cross-attention sublayer.
  void offer_cross_attention() { cross_attention_ = true; }
  bool offers(const std::string& slot) const { return slot != "cross_attention" || cross_attention_; }

  void add(const std::string& adapter, const std::string& slot, std::shared_ptr<SublayerAdapter> module);
  /// Runs the active adapters of `slot` in the order they were added (cheap when there are none).
  at::Tensor apply(const std::string& slot, const at::Tensor& input, const at::Tensor& output);

 private:
  bool cross_attention_ = false;
};
TORCH_MODULE(BlockAdapters);

}  // namespace peft::nn
