// LoRA (Hu et al. 2021): y = W0 x + s * B A dropout(x), s = lora_alpha / r (rsLoRA: / sqrt(r)).
// A in R^{r x in} ~ kaiming_uniform(a=sqrt(5)), B in R^{out x r} = 0, so the model starts as the
// base. Mergeable: W <- W0 + s * B A. Config fields and file layout follow Hugging Face PEFT.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/modules/linear.h>

#include "peft/methods/method.h"
#include "peft/methods/target_modules.h"
#include "peft/nn/linear_delta.h"

namespace peft::methods {

struct LoraConfig : MethodConfig {
  int64_t r = 8;
  double lora_alpha = 8.0;
  double lora_dropout = 0.0;
  TargetModules target_modules;   ///< empty: the model type's default (gpt2: c_attn)
  TargetModules exclude_modules;
  bool fan_in_fan_out = false;    ///< informational: each layer knows its own layout
  std::string bias = "none";      ///< "none" | "all" | "lora_only"
  bool use_rslora = false;
  /// true: A kaiming-uniform, B = 0; "gaussian": A ~ N(0, 1/r), B = 0; false: both random.
  std::string init_lora_weights = "true";
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> layers_pattern;
  std::vector<std::string> modules_to_save;
  /// {module pattern: value}, in the order keys are tried: HF PEFT takes the first key that
  /// matches, in its dict's order — the file's, for an adapter_config.json (which HF writes with
  /// sorted keys; follow_key_order keeps a hand-written file's order).
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;

  std::string method() const override { return "lora"; }
  std::string peft_type() const override { return "LORA"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<LoraConfig>(*this); }
  static std::shared_ptr<LoraConfig> from_json(const nlohmann::json& j);
  void follow_key_order(const nlohmann::ordered_json& source) override;
  nlohmann::ordered_json to_file_json() const override;

  /// Rank and scaling for one module (rank_pattern / alpha_pattern applied).
  int64_t rank_for(const std::string& module_name) const;
  double scaling_for(const std::string& module_name) const;
};

class LoraDelta : public nn::AdditiveWeightDelta {
 public:
  LoraDelta(int64_t in_features, int64_t out_features, int64_t r, double scaling, double dropout,
            const std::string& init, const at::TensorOptions& options);

  at::Tensor adapt_output(const at::Tensor& x, const at::Tensor& y) override;
  at::Tensor added_output(const at::Tensor& x, c10::ScalarType dtype) override;
  /// s * B A as [out, in].
  at::Tensor delta_weight() const override;

  double scaling() const { return scaling_; }

  torch::nn::Linear lora_A{nullptr};
  torch::nn::Linear lora_B{nullptr};

 private:
  double scaling_;
  double dropout_;
};

/// Registry entry ("lora" / "LORA").
Method lora_method();

}  // namespace peft::methods
