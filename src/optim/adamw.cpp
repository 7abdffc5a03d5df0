#include "peft/optim/adamw.h"

#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::optim {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  PEFT_CHECK(!params_.empty(), "train", "nothing to optimize: no trainable parameters");
  for (auto& [name, p] : params_) {
    PEFT_CHECK(p.requires_grad(), "train", "parameter '{}' does not require gradients", name);
    PEFT_CHECK(!exp_avg_.count(name), "train", "parameter name '{}' appears twice", name);
    exp_avg_[name] = torch::zeros_like(p, at::MemoryFormat::Preserve).detach();
    exp_avg_sq_[name] = torch::zeros_like(p, at::MemoryFormat::Preserve).detach();
    decays_.push_back(options_.decays ? options_.decays(name, p) : p.dim() >= 2);  // decided once
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_) p.mutable_grad() = at::Tensor();
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double bias1 = 1.0 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double bias2_sqrt = std::sqrt(1.0 - std::pow(options_.beta2, static_cast<double>(steps_)));
  const double step_size = lr / bias1;
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& [name, p] = params_[i];
    const at::Tensor& grad = p.grad();
    if (!grad.defined()) continue;
    const double decay = decays_[i] ? options_.weight_decay : 0.0;
    if (decay != 0.0) p.mul_(1.0 - lr * decay);
    at::Tensor& m = exp_avg_.at(name);
    at::Tensor& v = exp_avg_sq_.at(name);
    m.lerp_(grad, 1.0 - options_.beta1);
    v.mul_(options_.beta2).addcmul_(grad, grad, 1.0 - options_.beta2);
    at::Tensor denom = (v.sqrt() / bias2_sqrt).add_(options_.eps);
    p.addcdiv_(m, denom, -step_size);
  }
}

std::map<std::string, at::Tensor> AdamW::state_dict() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : exp_avg_) out["exp_avg." + name] = t;
  for (const auto& [name, t] : exp_avg_sq_) out["exp_avg_sq." + name] = t;
  out["step"] = torch::tensor({steps_}, torch::kLong);
  return out;
}

void AdamW::load_state_dict(const std::map<std::string, at::Tensor>& state) {
  torch::NoGradGuard no_grad;
  PEFT_CHECK(state.count("step"), "train", "optimizer state: missing 'step'");
  for (auto& [name, p] : params_)
    for (auto* table : {&exp_avg_, &exp_avg_sq_}) {
      const std::string key = (table == &exp_avg_ ? "exp_avg." : "exp_avg_sq.") + name;
      auto it = state.find(key);
      PEFT_CHECK(it != state.end(), "train", "optimizer state: missing '{}' (was it saved for another method?)", key);
      PEFT_CHECK(it->second.sizes() == p.sizes(), "train", "optimizer state: '{}' has shape {}, expected {}", key,
                 c10::str(it->second.sizes()), c10::str(p.sizes()));
      table->at(name).copy_(it->second);
    }
  steps_ = state.at("step").item<int64_t>();
}

std::string default_parameter_role(const std::string& name, const at::Tensor& p) {
  const auto dot = name.rfind('.');
  const std::string last = dot == std::string::npos ? name : name.substr(dot + 1);
  if (last.size() >= 4 && last.compare(last.size() - 4, 4, "bias") == 0) return "bias";
  return p.dim() < 2 ? "norm" : "weight";
}

const std::vector<std::string>& parameter_roles() {
  static const std::vector<std::string> roles = {"weight", "bias", "norm", "scale", "gate", "prompt"};
  return roles;
}

}  // namespace peft::optim
