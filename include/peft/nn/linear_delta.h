// The linear extension point's contract: a trainable modification of one AdaptableLinear.
#pragma once

#include <map>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace peft::nn {

/// A delta attached to an AdaptableLinear under an adapter name. LoRA, DSEE, IA3, ... derive
/// from it. Its registered parameters and buffers, named relative to the delta (for LoRA
/// "lora_A.weight"), are what a checkpoint stores after the module path.
class LinearDelta : public torch::nn::Module {
 public:
  /// Runs before the base projection (default: unchanged). Multiplicative input scaling hooks here.
  virtual at::Tensor adapt_input(const at::Tensor& x) { return x; }
  /// Whether adapt_input changes anything (a mixed-adapter batch then projects this delta's rows
  /// on their own instead of reusing the shared base projection).
  virtual bool adapts_input() const { return false; }
  /// Runs after the base projection: `x` is the layer input, `y` the output so far.
  virtual at::Tensor adapt_output(const at::Tensor& x, const at::Tensor& y) = 0;

  /// For a delta whose adapt_output(x, y) is y + f(x): f(x) in `dtype` (a mixed-adapter batch adds
  /// it to its rows in place); undefined (the default) for any other delta.
  virtual at::Tensor added_output(const at::Tensor& /*x*/, c10::ScalarType /*dtype*/) { return {}; }

  /// Whether merge_into / unmerge_from are available.
  virtual bool mergeable() const { return false; }
  /// Folds the delta into `weight_out_in` (an [out, in] view of the base weight) and `bias`.
  virtual void merge_into(at::Tensor& weight_out_in, at::Tensor& bias);
  /// Exact inverse of merge_into up to floating-point rounding.
  virtual void unmerge_from(at::Tensor& weight_out_in, at::Tensor& bias);

  /// The tensors a checkpoint stores, by relative name (default: parameters and buffers).
  virtual std::map<std::string, at::Tensor> delta_state();
  /// Checks names and shapes, then copies values in (without recording autograd history).
  virtual void load_delta_state(const std::map<std::string, at::Tensor>& state,
                                const std::string& where);
};

/// A delta that is an additive weight update ΔW ([out, in]): merging adds it to the base weight,
/// unmerging subtracts it (LoRA, DSEE, FacT, KAdaptation).
class AdditiveWeightDelta : public LinearDelta {
 public:
  virtual at::Tensor delta_weight() const = 0;
  bool mergeable() const override { return true; }
  void merge_into(at::Tensor& weight_out_in, at::Tensor& bias) override;
  void unmerge_from(at::Tensor& weight_out_in, at::Tensor& bias) override;
};

}  // namespace peft::nn
