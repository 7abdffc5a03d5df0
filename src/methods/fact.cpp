#include "peft/methods/fact.h"

#include <cmath>

#include <torch/torch.h>

#include "config_fields.h"
#include "method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace F = torch::nn::functional;
namespace {

constexpr const char* kC = "fact";

void attach_fact(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<FacTConfig&>(base_cfg);
  const int64_t d = model.base_model().hidden_size();
  const auto heads = model.implicit_modules_to_save(cfg);
  struct Target {
    std::string name;
    nn::AdaptableLinear lin;
  };
  std::vector<Target> chosen;
  std::vector<std::string> skipped;
  for (auto& [name, lin] : model.linears()) {
    if (inside_any(name, cfg.modules_to_save) || inside_any(name, heads)) continue;
    const bool fits = lin->in_features() % d == 0 && lin->out_features() % d == 0;
    if (cfg.target_modules.empty()) {
      if (!inside_block(model, name)) continue;
      if (!fits) {
        skipped.push_back(name);
        continue;
      }
    } else {
      if (!matches_target(name, cfg.target_modules, LayerSelection{})) continue;
      PEFT_CHECK(fits, kC, "'{}' is {}×{}: FacT cuts weights into {}×{} slices (hidden size), so both must be multiples",
                 name, lin->out_features(), lin->in_features(), d, d);
    }
    chosen.push_back({name, lin});
  }
  PEFT_CHECK(!chosen.empty(), kC, "no layer to adapt (target_modules {}); adaptable layers: {}",
             cfg.target_modules.to_json().dump(), describe_linears(model));
  if (!skipped.empty())
    log::info("fact: {} projections are not multiples of the hidden size {} and stay frozen (e.g. {})", skipped.size(),
              d, skipped.front());
  int64_t slices = 0;
  for (const auto& t : chosen) slices += (t.lin->out_features() / d) * (t.lin->in_features() / d);
  const auto opts = chosen.front().lin->weight.options().requires_grad(false);
  FacTShared shared(d, cfg.rank, cfg.variant, slices, opts);
  int64_t first = 0;
  for (size_t i = 0; i < chosen.size(); ++i) {
    auto& t = chosen[i];
    model.attach_linear_delta(adapter, t.name,
                              std::make_shared<FacTDelta>(t.lin->in_features(), t.lin->out_features(), shared, i == 0,
                                                          first, cfg, opts));
    first += (t.lin->out_features() / d) * (t.lin->in_features() / d);
  }
  model.add_modules_to_save(adapter, cfg.modules_to_save);
}

int64_t count_fact(const MethodConfig& base_cfg, const models::ModelGeometry& g) {
  const auto& cfg = dynamic_cast<const FacTConfig&>(base_cfg);
  PEFT_CHECK(cfg.target_modules.empty() && cfg.modules_to_save.empty(), kC,
             "a count from geometry alone covers the default targets only");
  const int64_t r = cfg.rank, s = fact_default_slices(g), d = g.hidden_size;
  return 2 * d * r + (cfg.variant == "tt" ? s * r * r : r * r * r + r * s);
}

}  // namespace

int64_t fact_default_slices(const models::ModelGeometry& g) {
  const int64_t d = g.hidden_size, kv = g.num_kv_heads * g.head_dim;
  int64_t attention = 2;                         // queries and the attention output
  if (kv % d == 0) attention += 2 * (kv / d);    // keys and values
  const int64_t mlp = g.intermediate_size % d == 0 ? g.mlp_matrices * (g.intermediate_size / d) : 0;
  // An encoder-decoder's decoder blocks add a cross-attention.
  return (attention + mlp) * g.num_layers + (2 * attention + mlp) * g.num_decoder_layers;
}

FacTSharedImpl::FacTSharedImpl(int64_t d, int64_t r, const std::string& variant, int64_t slices,
                               const at::TensorOptions& options) {
  // As nn.Linear initializes FacTu (kaiming-uniform, a = √5); FacTv zero so that ΔW = 0.
  u = register_parameter("u", torch::empty({r, d}, options));
  torch::nn::init::kaiming_uniform_(u, std::sqrt(5.0));
  v = register_parameter("v", torch::zeros({d, r}, options));
  if (variant == "tk") {
    core = register_parameter("core", torch::empty({r, r, r}, options));
    factors = register_parameter("factors", torch::empty({r, slices}, options));
    torch::nn::init::xavier_uniform_(core);
    torch::nn::init::xavier_uniform_(factors);
  }
}

FacTDelta::FacTDelta(int64_t in_features, int64_t out_features, FacTShared shared, bool owns_shared,
                     int64_t first_slice, const FacTConfig& config, const at::TensorOptions& options)
    : shared_(std::move(shared)),
      ko_(out_features / shared_->v.size(0)),
      ki_(in_features / shared_->u.size(1)),
      first_(first_slice),
      scaling_(config.scaling),
      dropout_(config.dropout) {
  const int64_t r = config.rank;
  if (config.variant == "tt") {
    // Each Σ_s as nn.Linear(r, r) initializes it.
    sigma = register_parameter("sigma", torch::empty({ko_, ki_, r, r}, options));
    const double bound = 1.0 / std::sqrt(static_cast<double>(r));
    torch::NoGradGuard g;
    sigma.uniform_(-bound, bound);
  }
  if (owns_shared) register_module("shared", shared_);
}

at::Tensor FacTDelta::slice_cores() const {
  if (sigma.defined()) return sigma;
  const int64_t r = shared_->u.size(0);
  at::Tensor p = shared_->factors.narrow(1, first_, ko_ * ki_);
  return torch::einsum("ijk,ks->sij", {shared_->core, p}).reshape({ko_, ki_, r, r});
}

at::Tensor FacTDelta::adapt_output(const at::Tensor& x, const at::Tensor& y) {
  const int64_t d = shared_->u.size(1);
  at::Tensor h = x.to(shared_->u.scalar_type()).reshape({-1, ki_, d});
  at::Tensor z = torch::einsum("xbr,abqr->xaq", {torch::matmul(h, shared_->u.t()), slice_cores()});
  if (dropout_ > 0.0) z = F::dropout(z, F::DropoutFuncOptions().p(dropout_).training(is_training()));
  at::Tensor out = torch::matmul(z, shared_->v.t()).reshape(y.sizes()) * scaling_;
  return y + out.to(y.scalar_type());
}

at::Tensor FacTDelta::delta_weight() const {
  const int64_t d = shared_->u.size(1);
  return torch::einsum("iq,abqr,rj->aibj", {shared_->v, slice_cores(), shared_->u}).reshape({ko_ * d, ki_ * d}) *
         scaling_;
}

namespace {
const std::vector<ConfigField<FacTConfig>>& fact_fields() {
  using C = FacTConfig;
  static const std::vector<ConfigField<C>> f = {
      field("variant", &C::variant),
      field("rank", &C::rank),
      field("scaling", &C::scaling),
      field("dropout", &C::dropout),
      targets_field("target_modules", &C::target_modules),
      string_list_field("modules_to_save", &C::modules_to_save)};
  return f;
}
}  // namespace

std::shared_ptr<FacTConfig> FacTConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, fact_fields(), kC, "FacT config");
  return c;
}

nlohmann::json FacTConfig::to_json() const { return write_config(*this, fact_fields()); }

void FacTConfig::validate() const {
  PEFT_CHECK(variant == "tt" || variant == "tk", kC, "variant must be tt or tk, found '{}'", variant);
  PEFT_CHECK(rank > 0, kC, "rank must be positive, found {}", rank);
  PEFT_CHECK(std::isfinite(scaling), kC, "scaling must be finite, found {}", scaling);
  PEFT_CHECK(dropout >= 0.0 && dropout < 1.0, kC, "dropout must be in [0, 1), found {}", dropout);
}

Method fact_method() {
  Method m;
  m.name = "fact";
  m.peft_type = "FACT";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return FacTConfig::from_json(j); };
  m.attach = attach_fact;
  m.count = count_fact;
  return m;
}

}  // namespace peft::methods
