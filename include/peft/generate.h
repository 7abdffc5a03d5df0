// Text generation with a causal LM, with or without a delta: greedy, or sampling with
// temperature, top-k and nucleus (top-p) filtering; stop tokens; a sliding context window that
// leaves room for an adapter's virtual tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace peft {
class PeftModel;

struct GenerationConfig {
  int64_t max_new_tokens = 50;
  double temperature = 0.0;  ///< 0: greedy (top_k / top_p unused); > 0: sample
  int64_t top_k = 0;         ///< keep the k most likely tokens (0: all)
  double top_p = 1.0;        ///< keep the smallest set whose mass reaches top_p (1: all)
  /// Generation ends at the first of these (it is not returned), e.g. the tokenizer's end-of-text.
  std::vector<int64_t> stop_tokens;
  /// Throws peft::Error naming the field.
  void validate() const;
};

struct GenerationResult {
  std::vector<int64_t> tokens;  ///< the new tokens only
  std::string stop_reason;      ///< "stop_token" | "max_new_tokens"
};

/// Continues `prompt` (token ids, not empty) with the model's active adapter (or the bare base).
/// The model runs in eval mode without gradients; sampling draws from LibTorch's default generator
/// (seed it with torch::manual_seed for a reproducible draw). The context is the last
/// `geometry().max_positions` tokens, less the active adapter's virtual tokens.
GenerationResult generate(PeftModel& model, const std::vector<int64_t>& prompt, const GenerationConfig& config);

}  // namespace peft
