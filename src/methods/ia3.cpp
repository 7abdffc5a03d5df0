#include "peft/methods/ia3.h"

#include <map>

#include <torch/torch.h>

#include "config_fields.h"
#include "method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/strings.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"
#include "peft/nn/per_sample.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "ia3";

using Defaults = std::pair<std::vector<std::string>, std::vector<std::string>>;

/// HF PEFT's per-architecture defaults: (targets, feed-forward subset); nullptr for other types.
const Defaults* defaults_of(const std::string& model_type) {
  static const std::map<std::string, Defaults> d = {
      {"gpt2", {{"c_attn", "mlp.c_proj"}, {"mlp.c_proj"}}},
      {"llama", {{"k_proj", "v_proj", "down_proj"}, {"down_proj"}}},
      {"mistral", {{"k_proj", "v_proj", "down_proj"}, {"down_proj"}}},
      {"bert", {{"key", "value", "output.dense"}, {"output.dense"}}},
      {"roberta", {{"key", "value", "output.dense"}, {"output.dense"}}},
      {"vit", {{"key", "value", "output.dense"}, {"output.dense"}}},
      {"t5", {{"k", "v", "wo"}, {"wo"}}}};
  auto it = d.find(model_type);
  return it == d.end() ? nullptr : &it->second;
}

void attach_ia3(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<IA3Config&>(base_cfg);
  cfg.validate();
  TargetModules targets = cfg.target_modules, feedforward = cfg.feedforward_modules;
  // As HF PEFT: unset target_modules and unset feedforward_modules each come from the model's
  // table, independently (explicit targets still get the table's feed-forward modules).
  const std::string type = model.base_model().model_type();
  const Defaults* defaults = defaults_of(type);
  if (targets.empty()) {
    PEFT_CHECK(defaults != nullptr, kC,
               "target_modules is not set and there is no default for model_type '{}'; list the modules to adapt", type);
    targets.names = defaults->first;
  }
  if (feedforward.empty() && defaults != nullptr) feedforward.names = defaults->second;
  const auto heads = model.implicit_modules_to_save(cfg);
  int matched = 0;
  for (auto& [name, lin] : model.linears()) {
    if (inside_any(name, cfg.modules_to_save) || inside_any(name, heads) || excluded(name, cfg.exclude_modules)) continue;
    if (!matches_target(name, targets, LayerSelection{})) continue;
    const bool ff = !feedforward.empty() && matches_target(name, feedforward, LayerSelection{});
    if (lin->fan_in_fan_out() && !cfg.fan_in_fan_out) {
      log::warn("ia3: fan_in_fan_out=false but '{}' stores its weight as [in, out] (Conv1D); setting "
                "fan_in_fan_out=true",
                name);
      cfg.fan_in_fan_out = true;
    }
    model.attach_linear_delta(adapter, name,
                              std::make_shared<IA3Delta>(lin->in_features(), lin->out_features(), ff,
                                                         cfg.init_ia3_weights, lin->weight.options()));
    ++matched;
  }
  PEFT_CHECK(matched > 0, kC, "target_modules {} matched no layer of this {} model; adaptable layers: {}",
             targets.to_json().dump(), model.base_model().model_type(), describe_linears(model));
  model.add_modules_to_save(adapter, cfg.modules_to_save);
}

}  // namespace

// ---- config ------------------------------------------------------------------

void IA3Config::validate() const {
  // HF PEFT's rule: with both as lists, every feed-forward module must also be a target.
  if (!target_modules.regex && !feedforward_modules.regex && !target_modules.empty())
    for (const auto& f : feedforward_modules.names)
      PEFT_CHECK(contains(target_modules.names, f), kC,
                 "feedforward_modules entry '{}' is not in target_modules ({}); it must be a subset", f,
                 target_modules.to_json().dump());
  PEFT_CHECK(!(target_modules.empty() && !feedforward_modules.empty()), kC,
             "feedforward_modules is set but target_modules is not");
}

namespace {
const std::vector<ConfigField<IA3Config>>& ia3_fields() {
  using C = IA3Config;
  static const std::vector<ConfigField<C>> f = {
      targets_field("target_modules", &C::target_modules),
      targets_field("feedforward_modules", &C::feedforward_modules),
      optional_targets_field("exclude_modules", &C::exclude_modules),
      field("fan_in_fan_out", &C::fan_in_fan_out),
      string_list_field("modules_to_save", &C::modules_to_save),
      field("init_ia3_weights", &C::init_ia3_weights)};
  return f;
}
}  // namespace

std::shared_ptr<IA3Config> IA3Config::from_json(const nlohmann::json& j) {
  auto c = read_config(j, ia3_fields(), kC, "IA3 config");
  c->validate();
  return c;
}

nlohmann::json IA3Config::to_json() const { return write_config(*this, ia3_fields()); }

// ---- the delta -----------------------------------------------------------------

IA3Delta::IA3Delta(int64_t in_features, int64_t out_features, bool feedforward, bool init_ones,
                   const at::TensorOptions& options)
    : feedforward_(feedforward) {
  auto shape = feedforward ? std::vector<int64_t>{1, in_features} : std::vector<int64_t>{out_features, 1};
  at::Tensor l = torch::ones(shape);
  if (!init_ones) l = l + torch::randn(shape) * 0.1;
  ia3_l = register_parameter("ia3_l", l.to(options.device(), options.dtype().toScalarType()));
}

at::Tensor IA3Delta::adapt_input(const at::Tensor& x) {
  if (!feedforward_) return x;
  return nn::recorded_scale(x.to(ia3_l.scalar_type()), ia3_l).to(x.scalar_type());
}

at::Tensor IA3Delta::adapt_output(const at::Tensor&, const at::Tensor& y) {
  if (feedforward_) return y;
  return nn::recorded_scale(y.to(ia3_l.scalar_type()), ia3_l).to(y.scalar_type());
}

void IA3Delta::merge_into(at::Tensor& weight_out_in, at::Tensor& bias) {
  const at::Tensor l = ia3_l.detach().to(weight_out_in.scalar_type());
  weight_out_in.mul_(l);  // [1, in] scales columns, [out, 1] rows
  if (!feedforward_ && bias.defined()) bias.mul_(l.flatten());
}

void IA3Delta::unmerge_from(at::Tensor& weight_out_in, at::Tensor& bias) {
  const at::Tensor l = ia3_l.detach().to(weight_out_in.scalar_type());
  PEFT_CHECK(!(l == 0).any().item<bool>(), kC, "cannot unmerge: an (IA)³ vector has a zero entry");
  weight_out_in.div_(l);
  if (!feedforward_ && bias.defined()) bias.div_(l.flatten());
}

Method ia3_method() {
  Method m;
  m.name = "ia3";
  m.peft_type = "IA3";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return IA3Config::from_json(j); };
  m.attach = attach_ia3;
  // Scales start at 1 (the identity); decay would pull them toward 0.
  m.parameter_role = [](const std::string& p) { return core::ends_with(p, ".ia3_l") ? std::string("scale") : std::string(); };
  return m;
}

}  // namespace peft::methods
