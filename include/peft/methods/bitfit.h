// BitFit (Ben Zaken et al. 2022): train only bias terms — all of them, or those of named modules
// (e.g. the query biases and the second MLP projection's). Existing biases become per-adapter
// trainable copies (saved under their own names); with add_missing_biases, projections that have
// no bias (LLaMA) get a zero-initialized one, which cannot be merged into a bias-less layer.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "peft/methods/method.h"
#include "peft/methods/target_modules.h"
#include "peft/nn/linear_delta.h"

namespace peft::methods {

struct BitFitConfig : MethodConfig {
  TargetModules bias_modules;  ///< empty: every bias of the model; else biases of these modules only
  bool add_missing_biases = false;
  std::vector<std::string> modules_to_save;

  std::string method() const override { return "bitfit"; }
  std::string peft_type() const override { return "BITFIT"; }
  nlohmann::json to_json() const override;
  void validate() const override {}
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<BitFitConfig>(*this); }
  static std::shared_ptr<BitFitConfig> from_json(const nlohmann::json& j);
};

/// A zero-initialized bias added to a projection that has none: y + b.
class AddedBiasDelta : public nn::LinearDelta {
 public:
  AddedBiasDelta(int64_t out_features, const at::TensorOptions& options);
  at::Tensor adapt_output(const at::Tensor& x, const at::Tensor& y) override;
  at::Tensor bias;
};

Method bitfit_method();

}  // namespace peft::methods
