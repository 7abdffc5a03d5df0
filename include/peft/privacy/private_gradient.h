// DP-SGD's gradient, for the Trainer or an application's own loop: Poisson sampling, and the
// noised sum of clipped per-example gradients (by a loop over the examples: every method's
// gradient, whatever its parameters).
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <utility>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "peft/data/dataset.h"
#include "peft/models/io.h"

namespace peft::privacy {

/// Each of n examples with probability q (Bernoulli each): the batch size varies.
std::vector<int64_t> poisson_sample(int64_t n, double q, std::mt19937_64& rng);

struct PrivateGradient {
  double loss_sum = 0;  ///< the sampled examples' losses, summed
  int64_t examples = 0;
  int64_t tokens = 0;
  int64_t clipped = 0;  ///< examples whose gradient norm exceeded the clipping norm
};

/// Leaves in each parameter's .grad: (Σ_i clip_C(g_i) + N(0, (σC)²)) / expected_batch, where g_i
/// is example i's gradient of its own loss over all of `params` (flat norm).
PrivateGradient private_gradient(const std::function<models::ModelOutput(const models::ModelInputs&)>& forward,
                                 const data::Dataset& dataset, const std::vector<int64_t>& indices,
                                 const std::vector<at::Tensor>& params, double clip_norm, double noise_multiplier,
                                 double expected_batch, at::Generator& noise, c10::Device device);

}  // namespace peft::privacy
