// Per-sample gradients of one batch from one forward and one backward (no per-example loop): the
// model computes each example's own loss, the ops that trainable tensors enter record their
// inputs and output gradients (nn/per_sample.h), and each tensor's per-sample gradient follows
// from them — for a linear delta Σ_t g_tᵀ x_t, or only its norm by the "ghost" identity
// ‖Σ_t g_tᵀ x_t‖² = Σ_{t,s} (x_t·x_s)(g_t·g_s) (Li et al. 2022) where that is cheaper.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "peft/models/io.h"

namespace peft::privacy {

/// How per-sample norms of linear deltas are computed.
enum class PerSampleNorms {
  kAuto,         ///< ghost where positions·(in + out) < in·out (fewer operations), else materialized
  kMaterialize,  ///< always form each example's gradient
  kGhost,        ///< ghost for every linear tensor used once per forward
};

/// One batch's per-sample gradients over `params` (the trainable tensors). Construction runs the
/// forward (with per_example_loss) and the backward; the tensors' .grad then hold the plain sum.
class PerSampleBatch {
 public:
  /// `names` (optional, parallel to `params`) name tensors in why().
  PerSampleBatch(const std::function<models::ModelOutput(const models::ModelInputs&)>& forward,
                 const models::ModelInputs& batch, const std::vector<at::Tensor>& params,
                 PerSampleNorms norms = PerSampleNorms::kAuto, const std::vector<std::string>& names = {});
  ~PerSampleBatch();
  PerSampleBatch(const PerSampleBatch&) = delete;
  PerSampleBatch& operator=(const PerSampleBatch&) = delete;

  /// False when some tensor's gradient is not covered by recorded ops (a method without a
  /// per-sample rule, an op off the batch dimension, or a use the records miss): why() says which,
  /// and nothing below may be used. Every batch is checked: the per-sample gradients must sum to
  /// the gradient backward accumulated.
  bool ok() const { return finite_ && why_.empty(); }
  /// False when some example's loss is not finite (losses() says which; nothing else was computed).
  bool finite() const { return finite_; }
  const std::string& why() const { return why_; }
  int64_t batch_size() const { return batch_size_; }
  /// Each example's loss [batch] (float64).
  const at::Tensor& losses() const { return losses_; }
  /// Each example's gradient norm over all of `params` (flat) [batch] (float64).
  const at::Tensor& norms() const { return norms_; }
  /// sums[k] += Σ_i factors[i] · (example i's gradient of params[k]).
  void add_weighted(std::vector<at::Tensor>& sums, const at::Tensor& factors) const;
  /// Example i's gradient of params[k], stacked: [batch, params[k] shape].
  at::Tensor gradient(size_t k) const;

 private:
  struct Tensor;
  std::vector<Tensor> tensors_;
  int64_t batch_size_ = 0;
  at::Tensor losses_, norms_;
  std::string why_;
  bool finite_ = true;
};

}  // namespace peft::privacy
