// Per-sample gradients without a per-example loop (DP-SGD): while a PerSampleRecorder is active
// on a thread, the ops through which trainable tensors enter the model record what each one's
// per-sample gradient is made of — the op's input and, once backward reaches it, the gradient of
// its output. For a linear op y = x Wᵀ, example i's gradient of W is Σ_t g_itᵀ x_it (summed over
// positions); a scale or a bias gives Σ_t g_it ⊙ x_it or Σ_t g_it. privacy/ turns the records
// into per-sample norms, clipped sums and (on request) the per-sample gradients themselves.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::nn {

/// How a recorded tensor enters its op's output.
enum class PerSampleRule {
  kLinear,       ///< y = x Wᵀ, W [out, in] (nn.Linear's layout)
  kLinearInOut,  ///< y = x W, W [in, out] (GPT-2's Conv1D layout)
  kScale,        ///< y = x ⊙ s, s of x.size(-1) values in any shape (broadcast over the last dim)
  kBias,         ///< y = x + b, b of y.size(-1) values
  kSparse,       ///< y[r] += Σ_k v_k x[c_k]: v [nnz] at flat indices r·in + c of an [out, in] matrix
};

/// One use of a trainable tensor in a forward pass. Tensors are [batch, positions, features].
struct PerSampleUse {
  PerSampleRule rule;
  at::Tensor param;        ///< the trainable tensor (its gradient is what is made per sample)
  at::Tensor input;        ///< the op's input x, detached (undefined for kBias)
  at::Tensor grad_output;  ///< ∂loss/∂y, set by backward (undefined if the output never got one)
  at::Tensor indices;      ///< kSparse: the flat support indices
  int64_t in_features = 0;  ///< kSparse: the dense matrix's column count
};

/// Records per-sample uses on the constructing thread while it lives (not nested). Backward must
/// run while it lives when forward is recomputed there (activation checkpointing).
class PerSampleRecorder {
 public:
  explicit PerSampleRecorder(int64_t batch_size);
  ~PerSampleRecorder();
  PerSampleRecorder(const PerSampleRecorder&) = delete;
  PerSampleRecorder& operator=(const PerSampleRecorder&) = delete;

  int64_t batch_size() const { return batch_size_; }
  const std::vector<std::shared_ptr<PerSampleUse>>& uses() const { return uses_; }
  /// The first op that could not be recorded (its tensors do not hold the batch along dim 0), or "".
  const std::string& problem() const { return problem_; }

  void add(std::shared_ptr<PerSampleUse> use) { uses_.push_back(std::move(use)); }
  void fail(std::string why) {
    if (problem_.empty()) problem_ = std::move(why);
  }

 private:
  int64_t batch_size_;
  std::vector<std::shared_ptr<PerSampleUse>> uses_;
  std::string problem_;
  PerSampleRecorder* previous_;
};

/// Whether a recorder is active on this thread.
bool per_sample_recording();

/// Records `param`'s use in the op that produced `output` from `input` (a no-op unless a recorder
/// is active, gradients are enabled and `param` requires one).
void record_per_sample(PerSampleRule rule, const at::Tensor& output, const at::Tensor& input, const at::Tensor& param,
                       const at::Tensor& indices = {}, int64_t in_features = 0);

/// F::linear(x, weight, bias), recording weight and bias.
at::Tensor recorded_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});
/// x ⊙ scale (scale's values broadcast over x's last dim), recording scale.
at::Tensor recorded_scale(const at::Tensor& x, const at::Tensor& scale);
/// x + bias (in x's dtype), recording bias.
at::Tensor recorded_add_bias(const at::Tensor& x, const at::Tensor& bias);

}  // namespace peft::nn
