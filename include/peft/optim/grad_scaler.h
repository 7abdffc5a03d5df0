// Dynamic loss scaling for float16 training, as PyTorch's torch.cuda.amp.GradScaler does it: the
// loss is multiplied by a scale before backward so that small float16 gradients do not flush to
// zero; gradients are divided back before clipping and the update; a step whose gradients hold
// an inf or nan is skipped and the scale backs off; after `growth_interval` clean steps it grows.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::optim {

struct GradScalerOptions {
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

/// What survives a resume: the scale and the clean steps counted toward the next growth.
struct GradScalerState {
  double scale = 65536.0;
  int64_t growth_tracker = 0;
};

class GradScaler {
 public:
  explicit GradScaler(const GradScalerOptions& options = {});
  /// `loss` times the current scale (what backward should run on).
  at::Tensor scale(const at::Tensor& loss) const;
  /// Divides every gradient by the scale in place; returns false when one holds an inf or nan
  /// (the step must then be skipped). Call once per step, before clipping.
  bool unscale(const std::vector<at::Tensor>& params) const;
  /// Ends a step: backs off after an overflow, else counts toward growth.
  void update(bool found_inf);
  double current_scale() const { return state_.scale; }
  const GradScalerState& state() const { return state_; }
  /// Checks the values (a positive, finite scale; a non-negative tracker) before taking them.
  void load_state(const GradScalerState& state);

 private:
  GradScalerOptions options_;
  GradScalerState state_;
};

}  // namespace peft::optim
