// The block-slot extension point: every transformer block passes each sublayer's output
// (attention, feed-forward; before the residual add) through the sublayer adapters attached to
// it. Sequential adapters transform that output; parallel ones add what they compute from the
// sublayer's input. Bottleneck adapters, AdaMix, SparseAdapter and Compacter live here.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace peft::nn {

class SublayerAdapter : public torch::nn::Module {
 public:
  /// `input`: what the sublayer read; `output`: what it produced. Returns the new output.
  virtual at::Tensor forward(const at::Tensor& input, const at::Tensor& output) = 0;
};

class BlockAdaptersImpl : public torch::nn::Module {
 public:
  /// The slots every block offers.
  static const std::vector<std::string>& slots();  // {"attention", "ffn"}

  void add(const std::string& adapter, const std::string& slot, std::shared_ptr<SublayerAdapter> module);
  void remove(const std::string& adapter);
  void set_active(const std::vector<std::string>& adapters) { active_ = adapters; }
  bool has(const std::string& adapter) const;
  /// Runs the active adapters of `slot` in the order they were added (cheap when there are none).
  at::Tensor apply(const std::string& slot, const at::Tensor& input, const at::Tensor& output);
  /// An adapter's tensors as "<slot>.<name>" (e.g. "ffn.down.weight").
  std::map<std::string, at::Tensor> state(const std::string& adapter) const;

 private:
  struct Entry {
    std::string adapter, slot;
    std::shared_ptr<SublayerAdapter> module;
  };
  std::vector<Entry> entries_;
  std::vector<std::string> active_;
  std::map<std::string, std::shared_ptr<torch::nn::Module>> containers_;  // adapter -> its slots
};
TORCH_MODULE(BlockAdapters);

}  // namespace peft::nn
