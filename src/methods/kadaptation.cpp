#include "peft/methods/kadaptation.h"

#include <torch/torch.h>

#include "config_fields.h"
#include "method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace F = torch::nn::functional;
namespace {

constexpr const char* kC = "kadaptation";

/// The projection kind sharing one rule: the module name without its layer prefix ("query").
std::string kind_of(const std::string& name) { return name.substr(name.rfind('.') + 1); }

void attach_kadaptation(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<KAdaptationConfig&>(base_cfg);
  const TargetModules targets =
      cfg.target_modules.empty() ? query_value_targets(model.base_model().model_type()) : cfg.target_modules;
  const auto heads = model.implicit_modules_to_save(cfg);
  std::map<std::string, KroneckerRule> rules;
  for (auto& [name, lin] : model.linears()) {
    if (inside_any(name, cfg.modules_to_save) || inside_any(name, heads)) continue;
    if (!matches_target(name, targets, LayerSelection{})) continue;
    const int64_t n = cfg.phm_dim;
    PEFT_CHECK(lin->in_features() % n == 0 && lin->out_features() % n == 0, kC,
               "phm_dim {} must divide the in and out features of '{}' ({} and {})", n, name, lin->in_features(),
               lin->out_features());
    const auto opts = lin->weight.options().requires_grad(false);
    auto it = rules.find(kind_of(name));
    const bool owner = it == rules.end();
    if (owner) it = rules.emplace(kind_of(name), KroneckerRule(n, opts)).first;
    model.attach_linear_delta(adapter, name,
                              std::make_shared<KAdaptationDelta>(lin->in_features(), lin->out_features(), it->second,
                                                                 owner, cfg.train_bias && lin->bias.defined(), cfg, opts));
  }
  PEFT_CHECK(!rules.empty(), kC, "target_modules {} matched no layer of this {} model; adaptable layers: {}",
             targets.to_json().dump(), model.base_model().model_type(), describe_linears(model));
  model.add_modules_to_save(adapter, cfg.modules_to_save);
}

}  // namespace

KroneckerRuleImpl::KroneckerRuleImpl(int64_t n, const at::TensorOptions& options) {
  left = register_parameter("left", torch::empty({n, n}, options).uniform_(-0.01, 0.01));
  right = register_parameter("right", torch::empty({n, n}, options).uniform_(-0.01, 0.01));
}

KAdaptationDelta::KAdaptationDelta(int64_t in_features, int64_t out_features, KroneckerRule rule, bool owns_rule,
                                   bool with_bias, const KAdaptationConfig& config, const at::TensorOptions& options)
    : rule_(std::move(rule)), scaling_(config.scaling), weight_dropout_(config.weight_dropout) {
  const int64_t n = config.phm_dim;
  // The paper's released code zero-initializes both fast factors, which leaves ΔW ≡ 0 with zero
  // gradients for every Kronecker factor (only the bias would learn). One factor is Glorot, the
  // other zero: ΔW = 0 at init and the zero factor gets a gradient at once.
  fast_u = register_parameter("fast_u", torch::empty({n, out_features / n}, options));
  torch::nn::init::xavier_uniform_(fast_u);
  fast_v = register_parameter("fast_v", torch::zeros({n, in_features / n}, options));
  if (with_bias) bias = register_parameter("bias", torch::zeros({out_features}, options));
  if (owns_rule) register_module("rule", rule_);
}

at::Tensor KAdaptationDelta::delta_weight() const {
  // ΔW[a·p + c, b·q + d] = Σ_i left[i,a] right[i,b] u[i,c] v[i,d]
  const int64_t n = fast_u.size(0), p = fast_u.size(1), q = fast_v.size(1);
  return torch::einsum("ia,ib,ic,id->acbd", {rule_->left, rule_->right, fast_u, fast_v}).reshape({n * p, n * q}) *
         scaling_;
}

at::Tensor KAdaptationDelta::adapt_output(const at::Tensor& x, const at::Tensor& y) {
  at::Tensor h = x.to(fast_u.scalar_type());
  at::Tensor d;
  if (weight_dropout_ > 0.0 && is_training()) {
    d = F::linear(h, F::dropout(delta_weight(), F::DropoutFuncOptions().p(weight_dropout_).training(true)));
  } else {
    // Without dropout ΔW is never formed: t_i = (right_i ⊗ v_i)·x, then out = Σ_i t_i (left_i ⊗ u_i).
    const int64_t n = fast_u.size(0), q = fast_v.size(1);
    at::Tensor xb = h.reshape({-1, n, q});
    at::Tensor t = torch::einsum("xbd,ib,id->xi", {xb, rule_->right, fast_v});
    d = torch::einsum("xi,ia,ic->xac", {t, rule_->left, fast_u}).reshape(y.sizes()) * scaling_;
  }
  if (bias.defined()) d = d + bias;
  return y + d.to(y.scalar_type());
}

void KAdaptationDelta::merge_into(at::Tensor& weight_out_in, at::Tensor& layer_bias) {
  AdditiveWeightDelta::merge_into(weight_out_in, layer_bias);
  if (bias.defined()) layer_bias.add_(bias.to(layer_bias.scalar_type()));
}

void KAdaptationDelta::unmerge_from(at::Tensor& weight_out_in, at::Tensor& layer_bias) {
  AdditiveWeightDelta::unmerge_from(weight_out_in, layer_bias);
  if (bias.defined()) layer_bias.sub_(bias.to(layer_bias.scalar_type()));
}

namespace {
const std::vector<ConfigField<KAdaptationConfig>>& kadaptation_fields() {
  using C = KAdaptationConfig;
  static const std::vector<ConfigField<C>> f = {
      targets_field("target_modules", &C::target_modules),
      field("phm_dim", &C::phm_dim),
      field("scaling", &C::scaling),
      field("weight_dropout", &C::weight_dropout),
      field("train_bias", &C::train_bias),
      string_list_field("modules_to_save", &C::modules_to_save)};
  return f;
}
}  // namespace

std::shared_ptr<KAdaptationConfig> KAdaptationConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, kadaptation_fields(), kC, "KAdaptation config");
  return c;
}

nlohmann::json KAdaptationConfig::to_json() const { return write_config(*this, kadaptation_fields()); }

void KAdaptationConfig::validate() const {
  PEFT_CHECK(phm_dim > 0, kC, "phm_dim must be positive, found {}", phm_dim);
  PEFT_CHECK(std::isfinite(scaling), kC, "scaling must be finite, found {}", scaling);
  PEFT_CHECK(weight_dropout >= 0.0 && weight_dropout < 1.0, kC, "weight_dropout must be in [0, 1), found {}",
             weight_dropout);
}

Method kadaptation_method() {
  Method m;
  m.name = "kadaptation";
  m.peft_type = "KADAPTATION";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return KAdaptationConfig::from_json(j); };
  m.attach = attach_kadaptation;
  return m;
}

}  // namespace peft::methods
