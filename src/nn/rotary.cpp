#include "peft/nn/rotary.h"

#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {

RotaryEmbedding::RotaryEmbedding(int64_t head_dim, double theta, int64_t max_position_embeddings,
                                 RopeScaling scaling)
    : head_dim_(head_dim), theta_(theta), max_positions_(max_position_embeddings), scaling_(std::move(scaling)) {
  PEFT_CHECK(head_dim > 0 && head_dim % 2 == 0, "nn", "rotary embeddings need an even head_dim, found {}", head_dim);
  PEFT_CHECK(theta > 0.0, "nn", "rope_theta must be positive, found {}", theta);
  PEFT_CHECK(scaling_.type.empty() || scaling_.type == "linear" || scaling_.type == "dynamic", "nn",
             "rope_scaling.type must be \"linear\" or \"dynamic\", found \"{}\"", scaling_.type);
  PEFT_CHECK(scaling_.type.empty() || scaling_.factor >= 1.0, "nn",
             "rope_scaling.factor must be a number >= 1, found {}", scaling_.factor);
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::cos_sin(const at::Tensor& position_ids, int64_t seq_len,
                                                           c10::ScalarType dtype) const {
  double base = theta_;
  if (scaling_.type == "dynamic" && seq_len > max_positions_) {
    const double d = static_cast<double>(head_dim_);
    base = theta_ * std::pow(scaling_.factor * static_cast<double>(seq_len) / static_cast<double>(max_positions_) -
                                 (scaling_.factor - 1.0),
                             d / (d - 2.0));
  }
  // float32 throughout, in the reference order, then cast: this is what the weights were trained with.
  auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(position_ids.device());
  at::Tensor inv_freq = 1.0 / torch::pow(base, torch::arange(0, head_dim_, 2, f32.dtype(torch::kLong)).to(torch::kFloat) /
                                                   static_cast<double>(head_dim_));
  at::Tensor t = position_ids.to(torch::kFloat);
  if (scaling_.type == "linear") t = t / scaling_.factor;
  at::Tensor freqs = t.unsqueeze(-1) * inv_freq;
  at::Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

}  // namespace peft::nn
