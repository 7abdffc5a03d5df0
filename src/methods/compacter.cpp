#include "peft/methods/compacter.h"

#include <cmath>

#include <torch/torch.h>

#include "config_fields.h"
#include "method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "compacter";

void glorot_uniform_(at::Tensor t, int64_t fan_in, int64_t fan_out) {
  const double bound = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  t.uniform_(-bound, bound);
}

void attach_compacter(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<CompacterConfig&>(base_cfg);
  cfg.validate();
  const int64_t hidden = model.base_model().hidden_size();
  const int64_t m = cfg.bottleneck(hidden);
  PEFT_CHECK(hidden % cfg.phm_dim == 0 && m % cfg.phm_dim == 0, kC,
             "phm_dim {} must divide the hidden size ({}) and the bottleneck size ({})", cfg.phm_dim, hidden, m);
  auto options = model.base_model().parameters().front().options();
  PhmRule rule(cfg.phm_dim, options);
  bool owner = true;  // the first PHM layer registers the shared rule
  for (const auto& path : selected_blocks(model, cfg.layers_to_transform, kC))
    for (const auto& slot : cfg.slots()) {
      model.attach_block_adapter(adapter, path, slot, std::make_shared<PhmAdapterImpl>(hidden, m, rule, owner, cfg, options));
      owner = false;
    }
  if (cfg.train_layer_norms) train_layer_norms(model, adapter);
  model.add_modules_to_save(adapter, cfg.modules_to_save);
}

}  // namespace

// ---- config ------------------------------------------------------------------

int64_t CompacterConfig::bottleneck(int64_t hidden) const {
  const int64_t m = bottleneck_size > 0 ? bottleneck_size : hidden / reduction_factor;
  PEFT_CHECK(m >= 1, kC, "bottleneck size is {} for hidden size {}; lower reduction_factor or set bottleneck_size", m,
             hidden);
  return m;
}

std::vector<std::string> CompacterConfig::slots() const {
  if (variant == "compacter++") return {"ffn"};
  return {"attention", "ffn"};
}

int64_t CompacterConfig::adapter_parameters(int64_t hidden, int64_t layers) const {
  const int64_t n = phm_dim, m = bottleneck(hidden);
  auto phm = [&](int64_t in, int64_t out) {
    return (factorized_phm ? n * (in / n) * phm_rank + n * phm_rank * (out / n) : n * (in / n) * (out / n)) + out;
  };
  return layers * static_cast<int64_t>(slots().size()) * (phm(hidden, m) + phm(m, hidden)) + n * n * n;
}

void CompacterConfig::validate() const {
  PEFT_CHECK(variant == "compacter" || variant == "compacter++", kC,
             "variant must be \"compacter\" or \"compacter++\", found \"{}\"", variant);
  PEFT_CHECK(phm_dim >= 1 && phm_rank >= 1 && reduction_factor >= 1 && bottleneck_size >= 0, kC,
             "phm_dim, phm_rank and reduction_factor must be >= 1 and bottleneck_size >= 0");
  PEFT_CHECK(init_weights == "zero_up" || init_weights == "compacter", kC,
             "init_weights must be \"zero_up\" or \"compacter\", found \"{}\"", init_weights);
  nn::activation(non_linearity);
  for (int64_t l : layers_to_transform) PEFT_CHECK(l >= 0, kC, "layers_to_transform entries must be >= 0, found {}", l);
}

namespace {
const std::vector<ConfigField<CompacterConfig>>& compacter_fields() {
  using C = CompacterConfig;
  static const std::vector<ConfigField<C>> f = {
      field("variant", &C::variant),
      field("phm_dim", &C::phm_dim),
      field("reduction_factor", &C::reduction_factor),
      field("bottleneck_size", &C::bottleneck_size),
      field("phm_rank", &C::phm_rank),
      field("factorized_phm", &C::factorized_phm),
      field("non_linearity", &C::non_linearity),
      field("init_weights", &C::init_weights),
      field("train_layer_norms", &C::train_layer_norms),
      field("layers_to_transform", &C::layers_to_transform),
      string_list_field("modules_to_save", &C::modules_to_save)};
  return f;
}
}  // namespace

std::shared_ptr<CompacterConfig> CompacterConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, compacter_fields(), kC, "Compacter config");
  c->validate();
  return c;
}

nlohmann::json CompacterConfig::to_json() const { return write_config(*this, compacter_fields()); }

// ---- modules -------------------------------------------------------------------

PhmRuleImpl::PhmRuleImpl(int64_t n, const at::TensorOptions& options) {
  // A ~ N(0, 0.01) in both inits (phm_c_init="normal"); zero_up's identity comes from t = 0.
  weight = register_parameter("weight", (torch::randn({n, n, n}) * 0.01).to(options.device(), options.dtype().toScalarType()));
}

PhmLinearImpl::PhmLinearImpl(int64_t in, int64_t out, PhmRule rule, bool own_rule, const CompacterConfig& c,
                             bool zero_out, const at::TensorOptions& options)
    : rule_(std::move(rule)), n_(c.phm_dim) {
  const int64_t n = c.phm_dim, r = c.phm_rank;
  torch::NoGradGuard no_grad;
  if (c.factorized_phm) {
    phm_s = register_parameter("phm_s", torch::empty({n, in / n, r}));
    phm_t = register_parameter("phm_t", torch::empty({n, r, out / n}));
    glorot_uniform_(phm_s, in / n, r);
    glorot_uniform_(phm_t, r, out / n);
    if (zero_out) phm_t.zero_();
  } else {
    phm_w = register_parameter("phm_w", torch::empty({n, in / n, out / n}));
    glorot_uniform_(phm_w, in / n, out / n);
    if (zero_out) phm_w.zero_();
  }
  b = register_parameter("b", torch::zeros({out}));
  if (own_rule) register_module("phm_rule", rule_);
  for (auto& p : parameters(false)) p.set_data(p.to(options.device(), options.dtype().toScalarType()));
}

at::Tensor PhmLinearImpl::kron_weight() const {
  at::Tensor B = phm_w.defined() ? phm_w : torch::matmul(phm_s, phm_t);  // [n, in/n, out/n]
  const at::Tensor& A = rule_->weight;                                   // [n, n, n]
  // Σ_i A_i ⊗ B_i: entry (a·(in/n)+c, b·(out/n)+d) = Σ_i A[i,a,b] B[i,c,d]
  const int64_t p = B.size(1), q = B.size(2);
  at::Tensor terms = A.view({n_, n_, 1, n_, 1}) * B.view({n_, 1, p, 1, q});  // [i, a, c, b, d]
  return terms.sum(0).reshape({n_ * p, n_ * q});
}

at::Tensor PhmLinearImpl::forward(const at::Tensor& x) { return torch::matmul(x, kron_weight()) + b; }

PhmAdapterImpl::PhmAdapterImpl(int64_t hidden, int64_t bottleneck, PhmRule rule, bool own_rule,
                               const CompacterConfig& config, const at::TensorOptions& options)
    : act_(nn::activation(config.non_linearity)) {
  const bool zero_up = config.init_weights == "zero_up";
  down = register_module("down", PhmLinear(hidden, bottleneck, rule, own_rule, config, false, options));
  up = register_module("up", PhmLinear(bottleneck, hidden, rule, false, config, zero_up, options));
}

at::Tensor PhmAdapterImpl::forward(const at::Tensor&, const at::Tensor& output) {
  at::Tensor h = output.scalar_type() == down->b.scalar_type() ? output : output.to(down->b.scalar_type());
  return output + up->forward(act_(down->forward(h))).to(output.scalar_type());
}

Method compacter_method() {
  Method m;
  m.name = "compacter";
  m.peft_type = "COMPACTER";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return CompacterConfig::from_json(j); };
  m.attach = attach_compacter;
  return m;
}

}  // namespace peft::methods
