// Activation checkpointing: a transformer block keeps only its inputs during forward and
// recomputes its activations inside backward, trading one extra block forward for the memory of
// every intermediate tensor. The random generators are replayed, so dropout draws the same masks.
#pragma once

#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::nn {

/// A module whose forward runs a stack of transformer blocks and can checkpoint them
/// (PretrainedModel::set_gradient_checkpointing finds these among its modules).
struct BlockStack {
  virtual ~BlockStack() = default;
  bool checkpoint_blocks = false;
};

using BlockFunction = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;

/// `block(inputs)`, its intermediate activations not kept. `inputs` are the tensors gradients must
/// flow back through (the hidden stream, per-layer prefix keys/values; undefined ones allowed);
/// `params` every trainable tensor the block may read (gradients reach them through this call,
/// not by side effects, so both backward() and autograd::grad work). Anything else the block
/// reads must not need a gradient. `block` must be deterministic given the generators' state.
at::Tensor checkpointed(const BlockFunction& block, const std::vector<at::Tensor>& inputs,
                        const std::vector<at::Tensor>& params);

/// Whether a stack should checkpoint its blocks now: asked for, training, and grad mode on.
bool checkpointing_applies(bool enabled, bool training);

/// The tensors among `parameters` that require a gradient (a stack's `params` for checkpointed).
std::vector<at::Tensor> tensors_requiring_grad(const std::vector<at::Tensor>& parameters);

}  // namespace peft::nn
