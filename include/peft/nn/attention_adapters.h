// The attention extension point: adapters that add to an attention layer's context (the
// per-head mix of values, before the output projection) from extra keys and values of their
// own, projected with the layer's own key/value weights. LLaMA-Adapter lives here.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "peft/nn/adapter_holder.h"

namespace peft::nn {

/// What an attention layer offers its adapters.
struct AttentionView {
  /// The queries as the layer scored them, [batch, heads, seq, head_dim] (rotated where the family rotates).
  at::Tensor queries;
  /// Projects hidden states [n, len, hidden] with the layer's key and value weights to
  /// [n, heads, len, head_dim] each (kv heads already repeated for grouped-query attention).
  std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor&)> key_value;
  double score_divisor = 1.0;  ///< what the layer divides q·kᵀ by
};

class AttentionAdapter : public torch::nn::Module {
 public:
  /// The addition to the context [batch, heads, seq, head_dim].
  virtual at::Tensor forward(const AttentionView& view) = 0;
};

class AttentionAdaptersImpl : public AdapterHolder {
 public:
  AttentionAdaptersImpl() : AdapterHolder("AttentionAdapters") {}
  void add(const std::string& adapter, std::shared_ptr<AttentionAdapter> module) { add_entry(adapter, "", std::move(module)); }
  /// Whether any adapter runs (the layer builds its view only then).
  bool any_active() const;
  /// `context` plus what every active adapter adds.
  at::Tensor apply(const at::Tensor& context, const AttentionView& view);
};
TORCH_MODULE(AttentionAdapters);

}  // namespace peft::nn
