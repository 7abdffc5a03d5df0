// DP-SGD settings (Abadi et al. 2016) for the Trainer: per-example gradients clipped to
// max_grad_norm (one flat norm over every trainable tensor), summed, Gaussian noise of std
// noise_multiplier * max_grad_norm added, divided by the expected batch size; batches drawn by
// Poisson sampling at rate batch_size / dataset size; the RDP accountant tracks (ε, δ).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace peft::privacy {

struct DpSgdConfig {
  double max_grad_norm = 1.0;             ///< C: each example's gradient is clipped to this norm
  std::optional<double> noise_multiplier;  ///< σ; or derived from target_epsilon
  std::optional<double> target_epsilon;    ///< the σ reaching it after max_steps is searched for
  double delta = 1e-5;
  /// "poisson" (each example joins a batch with probability batch_size / N: what the accountant
  /// assumes) or "shuffle" (fixed batches of a shuffled epoch, accounted as if Poisson, as Opacus
  /// and TF Privacy do for them).
  std::string sampling = "poisson";
  /// Seeds sampling and noise for a reproducible run. Unset (the default, and what a private
  /// release needs): both come from the operating system's entropy, never from the run's seed.
  std::optional<uint64_t> noise_seed;
  /// "auto" (one batched pass where every trainable tensor has a per-sample rule — LoRA, DSEE,
  /// IA³, BitFit, bottleneck adapters, trained heads and norms — else a per-example loop, named in
  /// the log), "vectorized" (refuse the loop) or "loop".
  std::string per_sample_gradients = "auto";
  /// Examples per batched pass (a Poisson batch may exceed batch_size); 0: batch_size.
  int64_t max_physical_batch = 0;
};

}  // namespace peft::privacy
