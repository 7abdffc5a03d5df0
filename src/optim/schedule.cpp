#include "peft/optim/schedule.h"

#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::optim {

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

}  // namespace peft::optim
