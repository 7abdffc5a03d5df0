#include "peft/methods/adamix.h"

#include <torch/torch.h>

#include "config_fields.h"
#include "method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace F = torch::nn::functional;
namespace {

constexpr const char* kC = "adamix";

void attach_adamix(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<AdaMixConfig&>(base_cfg);
  cfg.validate();
  const int64_t hidden = model.base_model().hidden_size();
  auto options = model.base_model().parameters().front().options();
  for (const auto& path : selected_blocks(model, cfg.layers_to_transform, kC))
    model.attach_block_adapter(adapter, path, "ffn", std::make_shared<AdaMixAdapterImpl>(hidden, cfg, options));
  model.add_modules_to_save(adapter, cfg.modules_to_save);
}

}  // namespace

void AdaMixConfig::validate() const {
  PEFT_CHECK(num_experts >= 1 && bottleneck_size >= 1, kC, "num_experts and bottleneck_size must be >= 1 (found {}, {})",
             num_experts, bottleneck_size);
  PEFT_CHECK(consistency_weight >= 0.0, kC, "consistency_weight must be >= 0, found {}", consistency_weight);
  nn::activation(non_linearity);
}

namespace {
const std::vector<ConfigField<AdaMixConfig>>& adamix_fields() {
  using C = AdaMixConfig;
  static const std::vector<ConfigField<C>> f = {
      field("num_experts", &C::num_experts),         field("bottleneck_size", &C::bottleneck_size),
      field("sharing_down", &C::sharing_down),       field("sharing_up", &C::sharing_up),
      field("non_linearity", &C::non_linearity),     field("consistency_weight", &C::consistency_weight),
      field("layers_to_transform", &C::layers_to_transform), string_list_field("modules_to_save", &C::modules_to_save)};
  return f;
}
}  // namespace

std::shared_ptr<AdaMixConfig> AdaMixConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, adamix_fields(), kC, "AdaMix config");
  c->validate();
  return c;
}

nlohmann::json AdaMixConfig::to_json() const { return write_config(*this, adamix_fields()); }

AdaMixAdapterImpl::AdaMixAdapterImpl(int64_t hidden, const AdaMixConfig& c, const at::TensorOptions& options)
    : act_(nn::activation(c.non_linearity)) {
  const int64_t m = c.bottleneck_size, downs = c.sharing_down ? 1 : c.num_experts, ups = c.sharing_up ? 1 : c.num_experts;
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden));  // nn.Linear's default range
  auto o = options.requires_grad(false);
  down_weight = register_parameter("down_weight", torch::empty({downs, m, hidden}, o).uniform_(-bound, bound));
  down_bias = register_parameter("down_bias", torch::empty({downs, m}, o).uniform_(-bound, bound));
  // Zero up projections: every expert starts as the identity, and so does their average.
  up_weight = register_parameter("up_weight", torch::zeros({ups, hidden, m}, o));
  up_bias = register_parameter("up_bias", torch::zeros({ups, hidden}, o));
}

at::Tensor AdaMixAdapterImpl::forward(const at::Tensor&, const at::Tensor& output) {
  at::Tensor dw, db, uw, ub;
  if (is_training()) {
    // One expert per projection for the whole batch, drawn from the global generator (resumable).
    const int64_t i = torch::randint(down_weight.size(0), {1}, torch::kLong).item<int64_t>();
    const int64_t j = torch::randint(up_weight.size(0), {1}, torch::kLong).item<int64_t>();
    dw = down_weight[i], db = down_bias[i], uw = up_weight[j], ub = up_bias[j];
  } else {
    dw = down_weight.mean(0), db = down_bias.mean(0), uw = up_weight.mean(0), ub = up_bias.mean(0);
  }
  at::Tensor h = output.scalar_type() == dw.scalar_type() ? output : output.to(dw.scalar_type());
  return output + F::linear(act_(F::linear(h, dw, db)), uw, ub).to(output.scalar_type());
}

at::Tensor symmetric_kl(const at::Tensor& logits1, const at::Tensor& logits2) {
  const int64_t classes = logits1.size(-1);
  at::Tensor a = logits1.reshape({-1, classes}).to(torch::kFloat), b = logits2.reshape({-1, classes}).to(torch::kFloat);
  auto kl = [](const at::Tensor& p_logits, const at::Tensor& q_logits) {
    return F::kl_div(torch::log_softmax(p_logits, -1), torch::softmax(q_logits.detach(), -1),
                     F::KLDivFuncOptions().reduction(torch::kBatchMean));
  };
  return 0.5 * (kl(a, b) + kl(b, a));
}

void adamix_deploy(PeftModel& model, const std::string& source, const std::string& target) {
  const auto& cfg = dynamic_cast<const AdaMixConfig&>(model.adapter_config(source));
  AdaMixConfig one = cfg;
  one.num_experts = 1;
  model.add_adapter(target, one);
  auto from = model.adapter_state_dict(source);
  torch::NoGradGuard no_grad;
  for (auto& [key, dst] : model.adapter_state_dict(target)) {
    const at::Tensor& src = from.at(key);
    dst.copy_(src.dim() == dst.dim() && src.size(0) != dst.size(0) ? src.mean(0, /*keepdim=*/true) : src);
  }
}

Method adamix_method() {
  Method m;
  m.name = "adamix";
  m.peft_type = "ADAMIX";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return AdaMixConfig::from_json(j); };
  m.attach = attach_adamix;
  // The consistency regularization: a second, independently routed pass while training.
  m.training_loss = [](PeftModel& model, const std::string& adapter, const models::ModelInputs& in,
                       const models::ModelOutput& out) -> at::Tensor {
    const auto& cfg = dynamic_cast<const AdaMixConfig&>(model.adapter_config(adapter));
    if (cfg.consistency_weight <= 0) return {};
    auto again = model.forward(in);
    return cfg.consistency_weight * symmetric_kl(out.logits, again.logits);
  };
  // Ships the expert average: one adapter's size and cost.
  m.deploy = [](PeftModel& model, const std::string& source, const std::string& target) {
    if (dynamic_cast<const AdaMixConfig&>(model.adapter_config(source)).num_experts == 1) return false;
    adamix_deploy(model, source, target);
    return true;
  };
  return m;
}

}  // namespace peft::methods
