// AdamW exactly as torch.optim.AdamW (single-tensor path) computes it, with its state held
// by parameter name so that it can be saved and resumed on any LibTorch version. Which tensors
// decay is the caller's rule (by default every tensor of two or more dimensions; the trainer
// decides by role, see parameter_role).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::optim {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.01;
  /// Whether a tensor (by name) gets weight decay; unset: those of two or more dimensions.
  std::function<bool(const std::string& name, const at::Tensor& p)> decays;
};

/// A trainable tensor's role, from its name and shape alone: "bias" (the last name segment is or
/// ends in "bias"), "norm" (any other tensor of one dimension), else "weight". Methods name the
/// roles of their own tensors ("scale", "gate", "prompt"; PeftModel::parameter_role).
std::string default_parameter_role(const std::string& name, const at::Tensor& p);
/// The roles the trainer can exempt from weight decay.
const std::vector<std::string>& parameter_roles();

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options);
  /// One update with learning rate `lr` (the schedule's value); parameters without a gradient are left alone.
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return steps_; }
  /// exp_avg.<name>, exp_avg_sq.<name>, and "step".
  std::map<std::string, at::Tensor> state_dict() const;
  /// Restores a state_dict; a missing or mis-shaped entry names the parameter.
  void load_state_dict(const std::map<std::string, at::Tensor>& state);
  const std::vector<std::pair<std::string, at::Tensor>>& params() const { return params_; }

 private:
  std::vector<std::pair<std::string, at::Tensor>> params_;
  AdamWOptions options_;
  std::map<std::string, at::Tensor> exp_avg_, exp_avg_sq_;
  std::vector<bool> decays_;  // per parameter, in params_ order
  int64_t steps_ = 0;
};

}  // namespace peft::optim
