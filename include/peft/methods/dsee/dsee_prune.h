// DSEE stage 2, resource-efficient inference: with the stage-1 update merged in mind, prune the
// block projections — unstructured, by global magnitude of W₀ + ΔW over all of them, and
// structured, the least important attention heads of each layer (importance = Σ|ΔW| over the
// head's query and value rows, the paper's "ABS" score). The base keeps its masked weights and
// the update is masked the same way, so re-tuning LoRA + S keeps every pruned entry at zero and
// merging yields the sparse final weights.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace peft {
class PeftModel;
}

namespace peft::methods {

struct DseePruneOptions {
  double pruning_ratio = 0.5;  ///< fraction of all block-projection weights zeroed by magnitude
  int64_t heads_to_prune = 0;  ///< attention heads removed in every layer
};

struct DseePruneReport {
  int64_t weights = 0;         ///< block-projection weights
  int64_t zeroed = 0;          ///< of them now zero (magnitude and head pruning together)
  int64_t heads = 0, heads_pruned = 0;
  /// Multiply-adds per token of the block projections, dense vs counting only the kept weights.
  int64_t macs_dense = 0, macs_kept = 0;
  nlohmann::json to_json() const;
};

/// Prunes the model around `adapter` (a DSEE adapter; other layers are pruned by |W₀|).
DseePruneReport dsee_prune(PeftModel& model, const std::string& adapter, const DseePruneOptions& options);

}  // namespace peft::methods
