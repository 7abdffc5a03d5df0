// Learning-rate schedules and gradient clipping, shared by the trainer and by methods that
// optimise on their own (S3PET's search).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::optim {

/// Multiplier of the peak learning rate at `step` (0-based): linear warm-up over `warmup`
/// steps, then "constant", "linear" (to 0 at `total`) or "cosine" (to 0 at `total`).
double schedule_factor(const std::string& kind, int64_t step, int64_t warmup, int64_t total);

/// Scales gradients so that their global L2 norm is at most `max_norm`; returns the norm before.
double clip_grad_norm(const std::vector<std::pair<std::string, at::Tensor>>& params, double max_norm);

}  // namespace peft::optim
