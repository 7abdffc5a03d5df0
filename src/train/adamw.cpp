#include "peft/train/adamw.h"

#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::train {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  PEFT_CHECK(!params_.empty(), "train", "nothing to optimize: no trainable parameters");
  for (auto& [name, p] : params_) {
    PEFT_CHECK(p.requires_grad(), "train", "parameter '{}' does not require gradients", name);
    PEFT_CHECK(!exp_avg_.count(name), "train", "parameter name '{}' appears twice", name);
    exp_avg_[name] = torch::zeros_like(p, at::MemoryFormat::Preserve).detach();
    exp_avg_sq_[name] = torch::zeros_like(p, at::MemoryFormat::Preserve).detach();
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
  for (auto& [name, p] : params_) {
    const at::Tensor& grad = p.grad();
    if (!grad.defined()) continue;
    const double decay = p.dim() >= 2 ? options_.weight_decay : 0.0;
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

double schedule_factor(const std::string& kind, int64_t step, int64_t warmup, int64_t total) {
  if (warmup > 0 && step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (kind == "constant") return 1.0;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  if (kind == "linear") return 1.0 - progress;
  if (kind == "cosine") return 0.5 * (1.0 + std::cos(M_PI * progress));
  fail("train", fmt::format("schedule '{}' is not one of constant, linear, cosine", kind));
}

double clip_grad_norm(const std::vector<std::pair<std::string, at::Tensor>>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  double total = 0.0;
  for (const auto& [name, p] : params)
    if (p.grad().defined()) total += p.grad().to(torch::kDouble).pow(2).sum().item<double>();
  const double norm = std::sqrt(total);
  if (max_norm > 0.0 && std::isfinite(norm) && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    for (const auto& [name, p] : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return norm;
}

}  // namespace peft::train
