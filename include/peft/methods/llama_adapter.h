// LLaMA-Adapter (Zhang et al. 2023): K learnable adaption prompts in each of the top L layers.
// Their keys and values come from the layer's own key/value projections (never rotated); the
// real tokens' queries attend to them with a softmax of their own, scaled by a zero-initialized
// gate, and the result joins the attention context: at init the model is the base, bit for bit.
// Layers below the adapted ones hold nothing trainable, so autograd records nothing there.
// Two gates: HF PEFT's one scalar per layer, used as is ("scalar": ADAPTION_PROMPT files load as
// HF wrote them), and the paper's one per head through tanh ("per_head_tanh").
#pragma once

#include <memory>
#include <string>

#include "peft/methods/method.h"
#include "peft/nn/attention_adapters.h"

namespace peft::methods {

struct LlamaAdapterConfig : MethodConfig {
  int64_t adapter_len = 10;     ///< K, prompts per layer
  int64_t adapter_layers = 0;   ///< L, counted from the top (0: every layer)
  std::string target_modules;   ///< the attention module's name ("self_attn"); "" = every attention layer
  std::string gate = "scalar";  ///< scalar | per_head_tanh (written only when not the HF default)

  std::string method() const override { return "llama_adapter"; }
  std::string peft_type() const override { return "ADAPTION_PROMPT"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<LlamaAdapterConfig>(*this); }
  static std::shared_ptr<LlamaAdapterConfig> from_json(const nlohmann::json& j);
};

class AdaptionPrompt : public nn::AttentionAdapter {
 public:
  AdaptionPrompt(int64_t adapter_len, int64_t hidden, int64_t gate_heads, bool tanh_gate, const at::TensorOptions& options);
  at::Tensor forward(const nn::AttentionView& view) override;

  at::Tensor adaption_prompt;  ///< [1, K, hidden], N(0, 1)
  at::Tensor adaption_gate;    ///< [1] (scalar) or [1, heads, 1, 1] (per head); zeros

 private:
  bool tanh_gate_;
};

Method llama_adapter_method();

}  // namespace peft::methods
