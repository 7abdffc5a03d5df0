// (IA)³ (Liu et al. 2022): learned vectors rescale activations. As Hugging Face PEFT does it:
// on a feed-forward target the input is scaled, y = W (x ⊙ l) + b, l of shape [1, in]; on any
// other target the output is, y = (W x + b) ⊙ l, l of shape [out, 1]. l starts at 1 (the model
// starts as the base, exactly). Mergeable: W's columns (feed-forward) or rows and bias are scaled.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "peft/methods/method.h"
#include "peft/methods/target_modules.h"
#include "peft/nn/linear_delta.h"

namespace peft::methods {

struct IA3Config : MethodConfig {
  TargetModules target_modules;       ///< empty: the model type's default (gpt2: c_attn, mlp.c_proj)
  TargetModules feedforward_modules;  ///< a subset of target_modules; empty: the model type's default
  TargetModules exclude_modules;      ///< layers left alone even when targeted (HF PEFT's exclude_modules)
  bool fan_in_fan_out = false;        ///< informational: each layer knows its own layout
  std::vector<std::string> modules_to_save;
  bool init_ia3_weights = true;       ///< false: random vectors around 1 (tests, experiments)

  std::string method() const override { return "ia3"; }
  std::string peft_type() const override { return "IA3"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<IA3Config>(*this); }
  static std::shared_ptr<IA3Config> from_json(const nlohmann::json& j);
};

class IA3Delta : public nn::LinearDelta {
 public:
  IA3Delta(int64_t in_features, int64_t out_features, bool feedforward, bool init_ones,
           const at::TensorOptions& options);
  at::Tensor adapt_input(const at::Tensor& x) override;
  bool adapts_input() const override { return feedforward_; }
  at::Tensor adapt_output(const at::Tensor& x, const at::Tensor& y) override;
  bool mergeable() const override { return true; }
  void merge_into(at::Tensor& weight_out_in, at::Tensor& bias) override;
  void unmerge_from(at::Tensor& weight_out_in, at::Tensor& bias) override;
  bool feedforward() const { return feedforward_; }

  at::Tensor ia3_l;  ///< [1, in] (feed-forward) or [out, 1]

 private:
  bool feedforward_;
};

/// Registry entry ("ia3" / "IA3").
Method ia3_method();

}  // namespace peft::methods
