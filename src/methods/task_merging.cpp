#include "peft/methods/task_merging.h"

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::methods::merging {
namespace {

constexpr const char* kC = "merge";

at::Tensor stack(const std::vector<at::Tensor>& tensors) {
  PEFT_CHECK(!tensors.empty(), kC, "no tensors to merge");
  return torch::stack(tensors, 0);
}

/// weights [n] viewed to broadcast over stacked [n, ...].
at::Tensor weight_column(const std::vector<double>& weights, const at::Tensor& stacked) {
  PEFT_CHECK(static_cast<int64_t>(weights.size()) == stacked.size(0), kC, "{} weights for {} tensors", weights.size(),
             stacked.size(0));
  std::vector<int64_t> shape(static_cast<size_t>(stacked.dim()), 1);
  shape[0] = stacked.size(0);
  return torch::tensor(weights, torch::kDouble).to(stacked.options()).view(shape);
}

void check_density(double density) {
  PEFT_CHECK(density >= 0.0, kC, "density must be >= 0, found {}", density);
}

}  // namespace

at::Tensor magnitude_prune_tensor(const at::Tensor& t, double density) {
  check_density(density);
  if (density >= 1.0) return t;
  const auto k = static_cast<int64_t>(density * static_cast<double>(t.numel()));
  at::Tensor mask = torch::zeros({t.numel()}, t.options());
  if (k > 0) mask.index_fill_(0, std::get<1>(t.abs().reshape(-1).topk(k)), 1);
  return t * mask.view(t.sizes());
}

at::Tensor random_prune_tensor(const at::Tensor& t, double density, at::Generator& gen) {
  check_density(density);
  if (density >= 1.0) return t;
  PEFT_CHECK(density > 0.0, kC, "random pruning with density 0 keeps nothing to rescale");
  // Drawn on the CPU from the seeded generator: the same mask on every device.
  at::Tensor keep = at::bernoulli(torch::full(t.sizes(), density, torch::kFloat), gen).to(t.options());
  return t * keep / density;
}

at::Tensor majority_sign_mask(const at::Tensor& stacked, const std::string& method) {
  const at::Tensor sign = stacked.sign();
  at::Tensor magnitude;
  if (method == "total") {
    magnitude = stacked.sum(0);
  } else if (method == "frequency") {
    magnitude = sign.sum(0);
  } else {
    PEFT_CHECK(false, kC, "majority_sign_method must be 'total' or 'frequency', found '{}'", method);
  }
  const at::Tensor majority = torch::where(magnitude >= 0, torch::ones_like(magnitude), -torch::ones_like(magnitude));
  return sign == majority;
}

at::Tensor disjoint_merge(const at::Tensor& stacked, const at::Tensor& mask) {
  const at::Tensor kept = (stacked * mask).sum(0);
  return kept / mask.sum(0).to(stacked.scalar_type()).clamp_min(1.0);
}

at::Tensor task_arithmetic(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights) {
  const at::Tensor s = stack(tensors);
  return (s * weight_column(weights, s)).sum(0);
}

namespace {

/// `prune` applied to each tensor, in order (DARE's draws come in that order).
template <typename Prune>
std::vector<at::Tensor> pruned(const std::vector<at::Tensor>& tensors, Prune&& prune) {
  std::vector<at::Tensor> out;
  for (const auto& t : tensors) out.push_back(prune(t));
  return out;
}

/// TIES' last two steps: the sign elected from the pruned tensors (before weighting, as HF PEFT),
/// then the disjoint mean of the weighted ones.
at::Tensor elect_and_merge(const std::vector<at::Tensor>& pruned_tensors, const std::vector<double>& weights,
                           const std::string& majority_sign_method) {
  const at::Tensor s = stack(pruned_tensors);
  const at::Tensor mask = majority_sign_mask(s, majority_sign_method);
  return disjoint_merge(s * weight_column(weights, s), mask);
}

}  // namespace

at::Tensor magnitude_prune(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density) {
  return task_arithmetic(pruned(tensors, [&](const at::Tensor& t) { return magnitude_prune_tensor(t, density); }), weights);
}

at::Tensor ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density,
                const std::string& majority_sign_method) {
  return elect_and_merge(pruned(tensors, [&](const at::Tensor& t) { return magnitude_prune_tensor(t, density); }),
                         weights, majority_sign_method);
}

at::Tensor dare_linear(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density,
                       at::Generator& gen) {
  return task_arithmetic(pruned(tensors, [&](const at::Tensor& t) { return random_prune_tensor(t, density, gen); }),
                         weights);
}

at::Tensor dare_ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density,
                     const std::string& majority_sign_method, at::Generator& gen) {
  return elect_and_merge(pruned(tensors, [&](const at::Tensor& t) { return random_prune_tensor(t, density, gen); }),
                         weights, majority_sign_method);
}

}  // namespace peft::methods::merging
