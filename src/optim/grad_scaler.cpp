#include "peft/optim/grad_scaler.h"

#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::optim {

GradScaler::GradScaler(const GradScalerOptions& options) : options_(options) {
  PEFT_CHECK(std::isfinite(options.init_scale) && options.init_scale > 0, "optim",
             "loss scaler: init_scale must be positive and finite, found {}", options.init_scale);
  PEFT_CHECK(options.growth_factor > 1.0 && options.backoff_factor > 0.0 && options.backoff_factor < 1.0, "optim",
             "loss scaler: growth_factor must be > 1 and backoff_factor in (0, 1), found {} and {}",
             options.growth_factor, options.backoff_factor);
  PEFT_CHECK(options.growth_interval > 0, "optim", "loss scaler: growth_interval must be positive, found {}",
             options.growth_interval);
  state_.scale = options.init_scale;
}

at::Tensor GradScaler::scale(const at::Tensor& loss) const { return loss * state_.scale; }

bool GradScaler::unscale(const std::vector<at::Tensor>& params) const {
  torch::NoGradGuard no_grad;
  bool finite = true;
  const double inv = 1.0 / state_.scale;
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    at::Tensor g = p.mutable_grad();
    // Checked in float32 at least: a float16 gradient's sum could overflow where its values do not.
    if (!torch::isfinite(g.to(torch::promote_types(g.scalar_type(), torch::kFloat))).all().item<bool>()) finite = false;
    g.mul_(inv);
  }
  return finite;
}

void GradScaler::update(bool found_inf) {
  if (found_inf) {
    state_.scale *= options_.backoff_factor;
    state_.growth_tracker = 0;
    return;
  }
  if (++state_.growth_tracker >= options_.growth_interval) {
    const double grown = state_.scale * options_.growth_factor;
    if (std::isfinite(grown)) state_.scale = grown;
    state_.growth_tracker = 0;
  }
}

void GradScaler::load_state(const GradScalerState& state) {
  PEFT_CHECK(std::isfinite(state.scale) && state.scale > 0 && state.growth_tracker >= 0, "optim",
             "loss scaler state: scale must be positive and finite and growth_tracker >= 0, found {} and {}",
             state.scale, state.growth_tracker);
  state_ = state;
}

}  // namespace peft::optim
