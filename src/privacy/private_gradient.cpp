#include "peft/privacy/private_gradient.h"

#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/data/batch_source.h"

namespace peft::privacy {

std::vector<int64_t> poisson_sample(int64_t n, double q, std::mt19937_64& rng) {
  std::bernoulli_distribution in(q);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i)
    if (in(rng)) out.push_back(i);
  return out;
}

PrivateGradient private_gradient(const std::function<models::ModelOutput(const models::ModelInputs&)>& forward,
                                 const data::Dataset& dataset, const std::vector<int64_t>& indices,
                                 const std::vector<at::Tensor>& params, double clip_norm, double noise_multiplier,
                                 double expected_batch, at::Generator& noise, c10::Device device) {
  PrivateGradient r;
  std::vector<at::Tensor> sums;
  for (const auto& p : params) sums.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
  for (int64_t i : indices) {
    for (const auto& p : params)
      if (p.grad().defined()) p.mutable_grad().reset();
    auto batch = data::to_device(dataset.batch({i}), device);
    r.tokens += batch.attention_mask.defined() ? batch.attention_mask.sum().item<int64_t>()
                                               : (batch.input_ids.defined() ? batch.input_ids.numel() : 1);
    auto out = forward(batch);
    PEFT_CHECK(out.loss.defined(), "privacy", "the model returned no loss (does the batch carry labels?)");
    const double value = out.loss.item<double>();
    PEFT_CHECK(std::isfinite(value), "privacy", "example {}: non-finite loss {} (lower the learning rate)", i, value);
    out.loss.to(torch::kFloat).backward();
    torch::NoGradGuard no_grad;
    double norm_sq = 0;
    for (const auto& p : params)
      if (p.grad().defined()) norm_sq += p.grad().to(torch::kFloat64).pow(2).sum().item<double>();
    const double norm = std::sqrt(norm_sq);
    const double factor = std::min(1.0, clip_norm / (norm + 1e-6));  // Opacus's clipping factor
    if (norm > clip_norm) ++r.clipped;
    for (size_t k = 0; k < params.size(); ++k)
      if (params[k].grad().defined()) sums[k].add_(params[k].grad(), factor);
    r.loss_sum += value;
    ++r.examples;
  }
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < params.size(); ++k) {
    at::Tensor g = sums[k];
    if (noise_multiplier > 0)
      g.add_(at::normal(0.0, noise_multiplier * clip_norm, g.sizes(), noise, g.options().device(torch::kCPU)).to(g.device()));
    g.div_(expected_batch);
    params[k].mutable_grad() = g;
  }
  return r;
}

}  // namespace peft::privacy
