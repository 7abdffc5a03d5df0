// Merging task tensors (Hugging Face PEFT's merge_utils semantics): weighted sums, TIES (trim by
// magnitude, elect the sign, disjoint mean; Yadav et al. 2023), DARE (drop at random and rescale
// by 1 / density; Yu et al. 2023) and magnitude pruning. Every tensor of a list has one shape.
#pragma once

#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

namespace peft::methods::merging {

/// Keeps the int(density * numel) entries of largest magnitude, zeroes the rest (density >= 1: all).
at::Tensor magnitude_prune_tensor(const at::Tensor& t, double density);
/// Keeps each entry with probability `density` (from `gen`), zeroes the rest, and divides what is
/// kept by density (so the expectation is unchanged).
at::Tensor random_prune_tensor(const at::Tensor& t, double density, at::Generator& gen);
/// For tensors stacked on dim 0: where each one's sign agrees with the elected sign, the sign of the
/// sum ("total") or of the sign count ("frequency"); ties elect +.
at::Tensor majority_sign_mask(const at::Tensor& stacked, const std::string& method);
/// The mean over dim 0 of the entries the mask keeps (0 where it keeps none).
at::Tensor disjoint_merge(const at::Tensor& stacked, const at::Tensor& mask);

/// Σ w_i t_i.
at::Tensor task_arithmetic(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights);
at::Tensor magnitude_prune(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density);
at::Tensor ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density,
                const std::string& majority_sign_method);
at::Tensor dare_linear(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density,
                       at::Generator& gen);
at::Tensor dare_ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density,
                     const std::string& majority_sign_method, at::Generator& gen);

}  // namespace peft::methods::merging
