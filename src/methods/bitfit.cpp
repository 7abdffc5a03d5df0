#include "peft/methods/bitfit.h"

#include <torch/torch.h>

#include "method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/strings.h"
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

std::shared_ptr<BitFitConfig> BitFitConfig::from_json(const nlohmann::json& j) {
  const std::string where = "BitFit config";
  static const std::vector<std::string> keys = {"bias_modules", "add_missing_biases", "modules_to_save"};
  PEFT_CHECK(j.is_object(), kC, "{}: expected a JSON object", where);
  for (auto it = j.begin(); it != j.end(); ++it)
    PEFT_CHECK(contains(keys, it.key()) || contains(common_keys(), it.key()), kC,
               "{}: unknown key '{}' (BitFit keys: {})", where, it.key(), fmt::join(keys, ", "));
  if (j.contains("peft_type"))
    PEFT_CHECK(j["peft_type"] == "BITFIT", kC, "{}: peft_type must be \"BITFIT\", found {}", where, j["peft_type"].dump());
  auto c = std::make_shared<BitFitConfig>();
  read_common(j, c->common, where);
  c->bias_modules = TargetModules::from_json(j.value("bias_modules", nlohmann::json()), where + " bias_modules");
  c->add_missing_biases = core::get_or<bool>(j, "add_missing_biases", false, kC, where);
  c->modules_to_save = string_list(j, "modules_to_save", where);
  return c;
}

nlohmann::json BitFitConfig::to_json() const {
  nlohmann::json j;
  write_common(j, common, peft_type());
  j["bias_modules"] = bias_modules.to_json();
  j["add_missing_biases"] = add_missing_biases;
  j["modules_to_save"] = modules_to_save.empty() ? nlohmann::json(nullptr) : nlohmann::json(modules_to_save);
  return j;
}

AddedBiasDelta::AddedBiasDelta(int64_t out_features, const at::TensorOptions& options) {
  bias = register_parameter("bias", torch::zeros({out_features}, options));
}

at::Tensor AddedBiasDelta::adapt_output(const at::Tensor&, const at::Tensor& y) { return y + bias.to(y.scalar_type()); }

Method bitfit_method() {
  Method m;
  m.name = "bitfit";
  m.peft_type = "BITFIT";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return BitFitConfig::from_json(j); };
  m.attach = attach_bitfit;
  return m;
}

}  // namespace peft::methods
