// AdaptableLinear: every projection of every backbone. Holds the frozen base weight under
// Hugging Face's name and layout, plus named deltas that adapters attach to it.
//
//   y = adapt_output_k( ... base(adapt_input_k(x)) ... )   over the active, unmerged deltas
//
// GPT-2's Conv1D stores its weight as [in, out] (`fan_in_fan_out`), nn.Linear as [out, in].
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/arg.h>
#include <torch/nn/pimpl.h>

#include "peft/core/fingerprint.h"
#include "peft/nn/linear_delta.h"
#include "peft/nn/quantization.h"
#include "peft/nn/row_groups.h"

namespace peft::nn {

struct AdaptableLinearOptions {
  AdaptableLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  /// Whether the layer has a bias.
  TORCH_ARG(bool, bias) = true;
  /// The weight is stored [in, out] (GPT-2's Conv1D) instead of nn.Linear's [out, in].
  TORCH_ARG(bool, fan_in_fan_out) = false;
};

class AdaptableLinearImpl : public torch::nn::Module, public RowRoutable {
 public:
  explicit AdaptableLinearImpl(const AdaptableLinearOptions& options);

  at::Tensor forward(const at::Tensor& x);
  /// The frozen projection alone, ignoring every delta.
  at::Tensor base_forward(const at::Tensor& x) const;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  bool fan_in_fan_out() const { return fan_in_fan_out_; }
  /// The weight as [out, in], whatever the storage layout (a view: writes go to the weight; for a
  /// quantized layer, a dequantized copy).
  at::Tensor weight_out_in() const;
  /// The weight's values in its storage layout: `weight` itself, or a quantized layer's
  /// dequantized copy (what a method reading base weights by name should see).
  at::Tensor weight_values() const;

  /// Stores the frozen weight quantized (weight-only; `compute_dtype` is what forward computes
  /// in). `weight` then holds an empty tensor of the compute dtype; a merged delta is refused.
  void quantize(QuantType type, bool double_quant, c10::ScalarType compute_dtype);
  /// quantize() from `source`, a weight in this layer's storage layout that is never assigned
  /// to `weight` (the loader quantizes each checkpoint tensor as it reads it).
  void quantize_from(const at::Tensor& source, QuantType type, bool double_quant, c10::ScalarType compute_dtype);
  bool quantized() const { return quantized_ != nullptr; }
  /// nullptr unless quantized.
  const QuantizedWeight* quantized_weight() const { return quantized_.get(); }
  /// The fingerprint identity of the weight as it was before quantization (quantized layers only).
  const core::TensorIdentity& original_weight_identity() const { return original_identity_; }
  c10::ScalarType compute_dtype() const { return compute_dtype_; }

  void add_delta(const std::string& adapter, std::shared_ptr<LinearDelta> delta);
  /// Detaches a delta. A merged delta is refused unless `keep_merged_weights` (merge_and_unload),
  /// which leaves its contribution in the base weight.
  void remove_delta(const std::string& adapter, bool keep_merged_weights = false);
  /// nullptr when this layer has no delta for `adapter`.
  std::shared_ptr<LinearDelta> delta(const std::string& adapter) const;
  std::vector<std::string> adapters() const;
  /// Deltas run in forward only when active and not merged.
  void set_active(const std::vector<std::string>& adapters);
  /// Mixed-adapter batches: while set (non-empty), each group's rows run that group's delta
  /// alone (and its own weight / bias copies) instead of the active deltas. Merged deltas refuse.
  void set_row_groups(RowGroups groups) override { groups_ = std::move(groups); }

  /// Folds a delta into the weight. A quantized weight is refused unless `requantize`: then it is
  /// dequantized, the delta added and the sum quantized again, returning the error that adds.
  RequantizationError merge(const std::string& adapter, bool requantize = false);
  RequantizationError unmerge(const std::string& adapter, bool requantize = false);
  bool merged(const std::string& adapter) const { return merged_.count(adapter) != 0; }
  bool any_merged() const { return !merged_.empty(); }

  at::Tensor weight;
  at::Tensor bias;  ///< undefined when the layer has no bias

 private:
  int64_t in_features_;
  int64_t out_features_;
  bool fan_in_fan_out_;
  std::vector<std::pair<std::string, std::shared_ptr<LinearDelta>>> deltas_;
  std::vector<std::string> active_;
  RowGroups groups_;
  std::set<std::string> merged_;
  std::shared_ptr<const QuantizedWeight> quantized_;
  core::TensorIdentity original_identity_;
  c10::ScalarType compute_dtype_ = c10::kFloat;

  /// Applies `change` to the [out, in] weight in place; a quantized weight is dequantized, changed
  /// and quantized again, returning the error that adds (merge / unmerge).
  template <typename Change>
  RequantizationError change_weight(Change&& change);
  /// The base projection with another weight ([storage layout]) and / or bias where given; a
  /// trainable weight or bias is recorded for per-sample gradients (nn/per_sample.h).
  at::Tensor project(const at::Tensor& x, const at::Tensor& weight_override, const at::Tensor& bias_override) const;
  at::Tensor project_unrecorded(const at::Tensor& x, const at::Tensor& weight_override, const at::Tensor& bias_override) const;
  at::Tensor forward_groups(const at::Tensor& x);
};

TORCH_MODULE(AdaptableLinear);

}  // namespace peft::nn
