// SparseAdapter (He et al. 2022): a bottleneck adapter whose weight matrices are pruned at
// initialization — scores "rand" (N(0,1)), "mag" (|θ|), "snip" (|θ ⊙ ∂L/∂θ| on one batch) or
// "grasp" (θ ⊙ H g on one batch),
// one threshold over all adapter matrices ("global") or one per matrix ("local") — and stay
// pruned: gradients of pruned entries are masked, so they remain exactly zero through every
// optimizer step. `pruned_fraction` is the share of weights removed (0.8 = 80 % zeros). Masks
// are saved as packed bits next to the weights. "Large-Sparse" = a larger bottleneck in
// `adapter` with the same budget.
#pragma once

#include <memory>
#include <string>

#include "peft/methods/method.h"
#include "peft/models/model.h"

namespace peft::methods {

struct SparseAdapterConfig : MethodConfig {
  /// The bottleneck adapter to prune (BOTTLENECK_ADAPTER fields); default: Pfeiffer, Houlsby init
  /// (score-based pruning needs non-zero weights).
  nlohmann::json adapter = {{"preset", "pfeiffer"}, {"init_weights", "houlsby"}};
  double pruned_fraction = 0.5;
  std::string score = "rand";   ///< rand | mag | snip | grasp
  std::string scope = "global"; ///< global | local
  uint64_t seed = 0;            ///< for "rand"

  std::string method() const override { return "sparse_adapter"; }
  std::string peft_type() const override { return "SPARSE_ADAPTER"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<SparseAdapterConfig>(*this); }
  static std::shared_ptr<SparseAdapterConfig> from_json(const nlohmann::json& j);
};

/// Recomputes an attached sparse adapter's masks from `batch` (required for snip and grasp; rand and
/// mag are computed at attach). Pruned weights are zeroed.
void prune_sparse_adapter(PeftModel& model, const std::string& adapter, const models::ModelInputs& batch);

/// Fraction of the adapter's matrix entries that are pruned (zero and masked).
double sparse_adapter_density(PeftModel& model, const std::string& adapter);

Method sparse_adapter_method();

}  // namespace peft::methods
