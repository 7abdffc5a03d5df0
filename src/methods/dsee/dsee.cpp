#include "peft/methods/dsee/dsee.h"

#include <algorithm>

#include <torch/torch.h>

#include "methods/config_fields.h"
#include "methods/method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/nn/per_sample.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace F = torch::nn::functional;
namespace {

constexpr const char* kC = "dsee";

void attach_dsee(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<DseeConfig&>(base_cfg);
  const TargetModules targets =
      cfg.target_modules.empty() ? query_value_targets(model.base_model().model_type()) : cfg.target_modules;
  const auto heads = model.implicit_modules_to_save(cfg);
  int matched = 0;
  for (auto& [name, lin] : model.linears()) {
    if (inside_any(name, cfg.modules_to_save) || inside_any(name, heads)) continue;
    if (!matches_target(name, targets, LayerSelection{})) continue;
    const int64_t size = lin->in_features() * lin->out_features();
    PEFT_CHECK(cfg.num_sparse <= size, kC, "num_sparse {} exceeds the {} entries of '{}'", cfg.num_sparse, size, name);
    at::Tensor support;
    {
      torch::NoGradGuard g;
      at::Tensor w = lin->weight_out_in().detach().to(torch::kFloat).cpu();
      // Inference loads replace the support with the saved one; choosing it would be wasted work.
      at::Tensor scores = cfg.common.inference_mode || cfg.sparse_init == "random"
                              ? torch::rand({lin->out_features(), lin->in_features()})
                              : grebsmo_sparse_part(w, cfg.grebsmo_iterations, cfg.grebsmo_threshold,
                                                     cfg.grebsmo_rank > 0 ? cfg.grebsmo_rank
                                                                          : std::min(w.size(0), w.size(1)) / 4);
      support = top_support(scores, cfg.num_sparse);
    }
    const auto opts = lin->weight.options().requires_grad(false);
    model.attach_linear_delta(adapter, name,
                              std::make_shared<DseeDelta>(lin->in_features(), lin->out_features(),
                                                          support.to(opts.device()), cfg, opts));
    ++matched;
  }
  PEFT_CHECK(matched > 0, kC, "target_modules {} matched no layer of this {} model; adaptable layers: {}",
             targets.to_json().dump(), model.base_model().model_type(), describe_linears(model));
  model.add_modules_to_save(adapter, cfg.modules_to_save);
}

}  // namespace

at::Tensor grebsmo_sparse_part(const at::Tensor& weight, int64_t iterations, double threshold, int64_t max_rank) {
  const int64_t m = weight.size(0), n = weight.size(1);
  max_rank = std::max<int64_t>(1, std::min({max_rank, m, n}));
  at::Tensor s = torch::zeros_like(weight);
  at::Tensor u = torch::zeros({m, 0}, weight.options()), v = torch::zeros({0, n}, weight.options());
  for (int64_t it = 0; it < iterations; ++it) {
    // Grow the rank by 5 (GreBsmo's greedy step): new directions from the residual's top singular vectors.
    const int64_t rank = std::min<int64_t>(5 * (it + 1), max_rank);
    if (rank > u.size(1)) {
      at::Tensor residual = weight - torch::matmul(u, v) - s;
      auto svd = torch::linalg_svd(residual, /*full_matrices=*/false);
      const int64_t add = rank - u.size(1);
      u = torch::cat({u, std::get<0>(svd).narrow(1, 0, add)}, 1);
      v = torch::cat({v, (std::get<1>(svd).narrow(0, 0, add).unsqueeze(1) * std::get<2>(svd).narrow(0, 0, add))}, 0);
    }
    for (int inner = 0; inner < 2; ++inner) {  // alternating updates: U by QR, V by projection
      at::Tensor target = weight - s;
      u = std::get<0>(torch::linalg_qr(torch::matmul(target, v.t())));
      v = torch::matmul(u.t(), target);
    }
    at::Tensor residual = weight - torch::matmul(u, v);
    s = torch::where(residual.abs() < threshold, torch::zeros_like(residual), residual);
  }
  return s;
}

at::Tensor top_support(const at::Tensor& scores, int64_t n) {
  // Ties by position (stable), so the support is the same on every run.
  at::Tensor flat = scores.reshape(-1).abs();
  at::Tensor order = std::get<1>(torch::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  return std::get<0>(torch::sort(order.narrow(0, 0, n)));
}

DseeDelta::DseeDelta(int64_t in_features, int64_t out_features, const at::Tensor& support, const DseeConfig& config,
                     const at::TensorOptions& options)
    : in_(in_features),
      out_(out_features),
      scaling_(config.lora_alpha / static_cast<double>(config.r)),
      dropout_(config.lora_dropout) {
  lora_A = register_parameter("lora_A", torch::empty({config.r, in_features}, options).normal_(0.0, 0.02));
  lora_B = register_parameter("lora_B", torch::zeros({out_features, config.r}, options));
  sparse_values = register_parameter("sparse_values", torch::zeros({support.numel()}, options));
  sparse_indices = register_buffer("sparse_indices", support.to(torch::kLong).clone());
}

at::Tensor DseeDelta::delta_weight() const {
  at::Tensor s = torch::zeros({out_ * in_}, sparse_values.options()).index_put({sparse_indices}, sparse_values);
  at::Tensor w = (torch::mm(lora_B, lora_A) + s.view({out_, in_})) * scaling_;
  return mask_.defined() ? w * mask_.to(w.scalar_type()) : w;
}

at::Tensor DseeDelta::adapt_output(const at::Tensor& x, const at::Tensor& y) {
  at::Tensor h = x.to(lora_A.scalar_type());
  if (dropout_ > 0.0) h = F::dropout(h, F::DropoutFuncOptions().p(dropout_).training(is_training()));
  if (mask_.defined()) return y + F::linear(h, delta_weight()).to(y.scalar_type());  // pruned: dense, masked
  at::Tensor low_rank = nn::recorded_linear(nn::recorded_linear(h, lora_A), lora_B);
  // S x without a dense S: each support entry (row, col) adds value · x[col] to row.
  at::Tensor flat = h.reshape({-1, in_});
  at::Tensor rows = torch::div(sparse_indices, in_, "floor"), cols = torch::remainder(sparse_indices, in_);
  at::Tensor sparse = torch::zeros({flat.size(0), out_}, flat.options())
                          .index_add(1, rows, flat.index_select(1, cols) * sparse_values)
                          .view(low_rank.sizes());
  if (nn::per_sample_recording())
    nn::record_per_sample(nn::PerSampleRule::kSparse, sparse, h, sparse_values, sparse_indices, in_);
  at::Tensor d = (low_rank + sparse) * scaling_;
  return y + d.to(y.scalar_type());
}

namespace {
const std::vector<ConfigField<DseeConfig>>& dsee_fields() {
  using C = DseeConfig;
  static const std::vector<ConfigField<C>> f = {
      field("r", &C::r),
      field("lora_alpha", &C::lora_alpha),
      field("lora_dropout", &C::lora_dropout),
      field("num_sparse", &C::num_sparse),
      field("sparse_init", &C::sparse_init),
      field("grebsmo_iterations", &C::grebsmo_iterations),
      field("grebsmo_threshold", &C::grebsmo_threshold),
      field("grebsmo_rank", &C::grebsmo_rank),
      targets_field("target_modules", &C::target_modules),
      string_list_field("modules_to_save", &C::modules_to_save)};
  return f;
}
}  // namespace

std::shared_ptr<DseeConfig> DseeConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, dsee_fields(), kC, "DSEE config");
  return c;
}

nlohmann::json DseeConfig::to_json() const { return write_config(*this, dsee_fields()); }

void DseeConfig::validate() const {
  PEFT_CHECK(r > 0, kC, "r must be positive, found {}", r);
  PEFT_CHECK(std::isfinite(lora_alpha) && lora_alpha != 0.0, kC, "lora_alpha must be finite and non-zero, found {}",
             lora_alpha);
  PEFT_CHECK(lora_dropout >= 0.0 && lora_dropout < 1.0, kC, "lora_dropout must be in [0, 1), found {}", lora_dropout);
  PEFT_CHECK(num_sparse > 0, kC, "num_sparse must be positive (entries of S per matrix), found {}", num_sparse);
  PEFT_CHECK(sparse_init == "grebsmo" || sparse_init == "random", kC, "sparse_init must be grebsmo or random, found '{}'",
             sparse_init);
  PEFT_CHECK(grebsmo_iterations > 0 && grebsmo_threshold >= 0.0 && grebsmo_rank >= 0, kC,
             "grebsmo_iterations must be positive, grebsmo_threshold and grebsmo_rank non-negative, found {}, {}, {}",
             grebsmo_iterations, grebsmo_threshold, grebsmo_rank);
}

Method dsee_method() {
  Method m;
  m.name = "dsee";
  m.peft_type = "DSEE";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return DseeConfig::from_json(j); };
  m.attach = attach_dsee;
  return m;
}

}  // namespace peft::methods
