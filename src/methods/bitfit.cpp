#include "peft/methods/bitfit.h"

#include <torch/torch.h>

#include "config_fields.h"
#include "method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/strings.h"
#include "peft/nn/per_sample.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "bitfit";

void attach_bitfit(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<BitFitConfig&>(base_cfg);
  const auto heads = model.implicit_modules_to_save(cfg);
  int64_t found = 0;
  for (const auto& name : model.base_parameter_names()) {
    if (!core::ends_with(name, ".bias")) continue;
    const std::string module = name.substr(0, name.size() - 5);
    if (inside_any(module, cfg.modules_to_save) || inside_any(module, heads)) continue;
    if (!cfg.bias_modules.empty() && !matches_target(module, cfg.bias_modules, LayerSelection{})) continue;
    model.add_trainable_base_tensor(adapter, name);
    ++found;
  }
  if (cfg.add_missing_biases)
    for (auto& [name, lin] : model.linears()) {
      if (lin->bias.defined() || inside_any(name, cfg.modules_to_save) || inside_any(name, heads)) continue;
      if (!cfg.bias_modules.empty() && !matches_target(name, cfg.bias_modules, LayerSelection{})) continue;
      model.attach_linear_delta(adapter, name, std::make_shared<AddedBiasDelta>(lin->out_features(), lin->weight.options()));
      ++found;
    }
  PEFT_CHECK(found > 0, kC, "no bias to train in this {} model{}{}", model.base_model().model_type(),
             cfg.bias_modules.empty() ? "" : " among bias_modules " + cfg.bias_modules.to_json().dump(),
             cfg.add_missing_biases ? "" : " (add_missing_biases adds zero biases to projections without one)");
  model.add_modules_to_save(adapter, cfg.modules_to_save);
}

}  // namespace

namespace {
const std::vector<ConfigField<BitFitConfig>>& bit_fit_fields() {
  using C = BitFitConfig;
  static const std::vector<ConfigField<C>> f = {
      targets_field("bias_modules", &C::bias_modules),
      field("add_missing_biases", &C::add_missing_biases),
      string_list_field("modules_to_save", &C::modules_to_save)};
  return f;
}
}  // namespace

std::shared_ptr<BitFitConfig> BitFitConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, bit_fit_fields(), kC, "BitFit config");
  return c;
}

nlohmann::json BitFitConfig::to_json() const { return write_config(*this, bit_fit_fields()); }

AddedBiasDelta::AddedBiasDelta(int64_t out_features, const at::TensorOptions& options) {
  bias = register_parameter("bias", torch::zeros({out_features}, options));
}

at::Tensor AddedBiasDelta::adapt_output(const at::Tensor&, const at::Tensor& y) { return nn::recorded_add_bias(y, bias); }

Method bitfit_method() {
  Method m;
  m.name = "bitfit";
  m.peft_type = "BITFIT";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return BitFitConfig::from_json(j); };
  m.attach = attach_bitfit;
  return m;
}

}  // namespace peft::methods
