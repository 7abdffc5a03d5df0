// Prompt tuning (Lester et al. 2021): p trained virtual-token embeddings put before the input
// embeddings (attention mask extended, causal-LM labels -100 there); the model stays frozen.
// Inits as HF PEFT: RANDOM (N(0, 1)), SAMPLE_VOCAB (random rows of the word embeddings) and
// TEXT (the embeddings of a tokenized text, repeated or cut to p). On ViT the virtual tokens
// follow the class token (visual prompt tuning).
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "peft/methods/method.h"
#include "peft/methods/prompt/prompt_learning.h"

namespace peft::methods {

struct PromptTuningConfig : MethodConfig {
  PromptLearningFields prompt;
  std::string prompt_tuning_init = "RANDOM";  ///< RANDOM | SAMPLE_VOCAB | TEXT
  std::string prompt_tuning_init_text;        ///< TEXT
  std::string tokenizer_name_or_path;         ///< TEXT: a tokenizer directory (tokenizer.json or vocab.json + merges.txt)
  nlohmann::json tokenizer_kwargs;            ///< accepted for HF files; must be null or empty

  std::string method() const override { return "prompt_tuning"; }
  std::string peft_type() const override { return "PROMPT_TUNING"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<PromptTuningConfig>(*this); }
  static std::shared_ptr<PromptTuningConfig> from_json(const nlohmann::json& j);
};

Method prompt_tuning_method();

/// The initial table [p, hidden] for `init` (exposed for tests): rows of `word_embeddings`
/// [vocab, hidden] for SAMPLE_VOCAB / TEXT (`token_ids` repeated or cut to p), N(0, 1) for RANDOM.
at::Tensor initial_prompt(const std::string& init, int64_t p, int64_t hidden, const at::Tensor& word_embeddings,
                          const std::vector<int64_t>& token_ids, const at::TensorOptions& options);

}  // namespace peft::methods
