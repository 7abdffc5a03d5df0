// DP-SGD's gradient, for the Trainer or an application's own loop: Poisson sampling, and the
// noised sum of clipped per-example gradients — from one batched forward and backward where every
// trainable tensor has a per-sample rule (per_sample_gradients.h), else by a loop over the
// examples (any method's gradient, whatever its parameters).
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "peft/data/dataset.h"
#include "peft/models/io.h"
#include "peft/privacy/per_sample_gradients.h"

namespace peft::privacy {

/// Each of n examples with probability q (Bernoulli each): the batch size varies.
std::vector<int64_t> poisson_sample(int64_t n, double q, std::mt19937_64& rng);

/// How per-example gradients are obtained.
enum class PerSampleMethod {
  kAuto,        ///< batched where every tensor has a rule, else the loop (PrivateGradient::fallback says why)
  kVectorized,  ///< batched, or an error naming the tensor without a rule
  kLoop,        ///< one forward and backward per example
};
/// "auto", "vectorized" or "loop"; anything else is an error naming `where`.
PerSampleMethod per_sample_method_from_string(const std::string& s, const std::string& where);
std::string to_string(PerSampleMethod m);

struct PrivateGradientOptions {
  double clip_norm = 1.0;         ///< C
  double noise_multiplier = 0.0;  ///< σ: the noise's std is σ·C
  double expected_batch = 1.0;    ///< the sum is divided by this (q·N for Poisson sampling)
  /// Examples per forward when batched (memory stays bounded however large a Poisson batch is); 0: all.
  int64_t max_physical_batch = 0;
  PerSampleMethod method = PerSampleMethod::kAuto;
  PerSampleNorms norms = PerSampleNorms::kAuto;
  std::vector<std::string> names;  ///< the tensors' names, for messages (optional)
};

struct PrivateGradient {
  double loss_sum = 0;  ///< the sampled examples' losses, summed
  int64_t examples = 0;
  int64_t tokens = 0;
  int64_t clipped = 0;  ///< examples whose gradient norm exceeded the clipping norm
  bool vectorized = false;  ///< whether every example's gradient came from a batched pass
  std::string fallback;     ///< kAuto: why the loop ran instead ("" when it did not)
  std::vector<double> norms;  ///< each example's gradient norm before clipping, in `indices` order
};

/// Leaves in each parameter's .grad: (Σ_i clip_C(g_i) + N(0, (σC)²)) / expected_batch, where g_i
/// is example i's gradient of its own loss over all of `params` (flat norm).
PrivateGradient private_gradient(const std::function<models::ModelOutput(const models::ModelInputs&)>& forward,
                                 const data::Dataset& dataset, const std::vector<int64_t>& indices,
                                 const std::vector<at::Tensor>& params, const PrivateGradientOptions& options,
                                 at::Generator& noise, c10::Device device);

}  // namespace peft::privacy
