// Text generation with a causal LM, with or without a delta: greedy, or sampling with
// temperature, top-k and nucleus (top-p) filtering and a repetition penalty; stop tokens; a
// key/value cache (the prompt runs once, then one token per step); batches of prompts of
// different lengths (left-padded, each row stopping on its own). Encoder-decoders (T5) take the
// prompt as the encoder's input and generate the decoder's tokens: the encoder runs once, the
// decoder one token per step over its cache and the cross-attention keys of the first step.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

namespace peft {
class PeftModel;
namespace tokenizers {
class Tokenizer;
}

struct GenerationConfig {
  int64_t max_new_tokens = 50;
  double temperature = 0.0;  ///< 0: greedy (top_k / top_p unused); > 0: sample
  int64_t top_k = 0;         ///< keep the k most likely tokens (0: all)
  double top_p = 1.0;        ///< keep the smallest set whose mass reaches top_p (1: all)
  /// > 1 discourages every token already in the prompt or the output (Hugging Face's rule: a
  /// positive logit is divided by it, a negative one multiplied); 1: off.
  double repetition_penalty = 1.0;
  /// Generation ends at the first of these (it is not returned), e.g. the tokenizer's end-of-text.
  std::vector<int64_t> stop_tokens;
  /// Decode with a key/value cache. Without it every step recomputes the whole context (the
  /// reference; what generation does by itself for an adapter whose side network cannot decode
  /// with a cache, such as LST's). Either way, once a row fills the model's positions
  /// its window slides: each further step recomputes the last max_positions tokens.
  bool use_cache = true;
  /// Sampling draws from a generator seeded with this (the same tokens on every run and device),
  /// else from LibTorch's default CPU generator (seed it with torch::manual_seed).
  std::optional<uint64_t> seed;
  /// Keep each step's next-token logits (float32 [vocab]) in GenerationResult::logits.
  bool output_logits = false;
  /// Fills the left of shorter prompts in a batch (never attended; any id in the vocabulary).
  int64_t pad_token = 0;
  /// One adapter per prompt (a mixed-adapter batch, see PeftModel::forward; "__base__" = the bare
  /// base). Empty: every prompt runs the active adapters.
  std::vector<std::string> adapter_names;
  /// Throws peft::Error naming the field.
  void validate() const;
};

struct GenerationResult {
  std::vector<int64_t> tokens;  ///< the new tokens only
  std::string stop_reason;      ///< "stop_token" | "max_new_tokens"
  std::vector<at::Tensor> logits;  ///< with output_logits: one [vocab] per generated token
};

/// Continues `prompt` (token ids, not empty) with the model's active adapter (or the bare base, or
/// config.adapter_names' one); an encoder-decoder answers it (the tokens are the decoder's). The model runs in eval mode without gradients. The context is the
/// last `geometry().max_positions` tokens, less the adapter's virtual tokens.
GenerationResult generate(PeftModel& model, const std::vector<int64_t>& prompt, const GenerationConfig& config);
/// The next token from one row's next-token logits (float32 [vocab] on the CPU), as generate
/// chooses it: repetition penalty over `seen`, then greedy or sampled from `generator` (LibTorch's
/// default CPU generator when unset). For schedulers that run their own decoding loop.
int64_t next_token(at::Tensor logits, const std::vector<int64_t>& seen, const GenerationConfig& config,
                   std::optional<at::Generator>& generator);
/// Records `next` as generation does: a stop token ends the row (stop_reason "stop_token") and is
/// not kept; any other token is appended to `ids` and `result` (its logits too with output_logits),
/// and the row ends at max_new_tokens (stop_reason "max_new_tokens"). Returns whether it goes on.
bool record_token(GenerationResult& result, std::vector<int64_t>& ids, int64_t next, const at::Tensor& logits,
                  const GenerationConfig& config);
/// Every prompt continued in one batch (left-padded to the longest); each row as if alone.
std::vector<GenerationResult> generate_batch(PeftModel& model, const std::vector<std::vector<int64_t>>& prompts,
                                             const GenerationConfig& config);

/// A prompt's token ids as generation takes them: a causal LM's with the tokenizer's special tokens
/// (BOS); an encoder-decoder's input without them and ending with the end-of-sequence token, as the
/// seq2seq data's sources do.
std::vector<int64_t> encode_prompt(const tokenizers::Tokenizer& tokenizer, const std::string& text, bool encoder_decoder);

}  // namespace peft
