// Prefix tuning (Li & Liang 2021): every layer attends to p trained key/value vectors before
// the real tokens (queries come from real tokens only). Optionally reparameterized while
// training, P = MLP(P') with Embedding -> Linear -> tanh -> Linear (HF's prefix_projection);
// the delta stores only P = "prompt_embeddings" [p, 2 * layers * kv_heads * head_dim] in HF's
// layout, so inference needs no MLP. For grouped-query models the prefix has the kv geometry.
#pragma once

#include <memory>
#include <string>

#include "peft/methods/method.h"
#include "peft/methods/prompt/prompt_learning.h"

namespace peft::methods {

struct PrefixTuningConfig : MethodConfig {
  PromptLearningFields prompt;
  int64_t encoder_hidden_size = 0;  ///< the MLP's width (0: token_dim, as HF fills it)
  bool prefix_projection = false;
  /// HF's init_weights: "" draws the prefix at random; "zero" starts it at zero (with projection:
  /// the MLP's last layer), so each layer's first steps see zero keys and values.
  std::string init_weights;

  std::string method() const override { return "prefix_tuning"; }
  std::string peft_type() const override { return "PREFIX_TUNING"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<PrefixTuningConfig>(*this); }
  static std::shared_ptr<PrefixTuningConfig> from_json(const nlohmann::json& j);
};

Method prefix_tuning_method();

}  // namespace peft::methods
