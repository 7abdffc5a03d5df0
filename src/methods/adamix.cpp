#include "peft/methods/adamix.h"

#include <torch/torch.h>

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

std::shared_ptr<AdaMixConfig> AdaMixConfig::from_json(const nlohmann::json& j) {
  const std::string where = "AdaMix config";
  static const std::vector<std::string> keys = {"num_experts", "bottleneck_size", "sharing_down", "sharing_up",
                                                "non_linearity", "consistency_weight", "layers_to_transform",
                                                "modules_to_save"};
  PEFT_CHECK(j.is_object(), kC, "{}: expected a JSON object", where);
  for (auto it = j.begin(); it != j.end(); ++it)
    PEFT_CHECK(contains(keys, it.key()) || contains(common_keys(), it.key()), kC, "{}: unknown key '{}' (keys: {})",
               where, it.key(), fmt::join(keys, ", "));
  if (j.contains("peft_type"))
    PEFT_CHECK(j["peft_type"] == "ADAMIX", kC, "{}: peft_type must be \"ADAMIX\", found {}", where, j["peft_type"].dump());
  auto c = std::make_shared<AdaMixConfig>();
  read_common(j, c->common, where);
  using core::get_or;
  c->num_experts = get_or<int64_t>(j, "num_experts", c->num_experts, kC, where);
  c->bottleneck_size = get_or<int64_t>(j, "bottleneck_size", c->bottleneck_size, kC, where);
  c->sharing_down = get_or<bool>(j, "sharing_down", c->sharing_down, kC, where);
  c->sharing_up = get_or<bool>(j, "sharing_up", c->sharing_up, kC, where);
  c->non_linearity = get_or<std::string>(j, "non_linearity", c->non_linearity, kC, where);
  c->consistency_weight = get_or<double>(j, "consistency_weight", c->consistency_weight, kC, where);
  c->layers_to_transform = get_or<std::vector<int64_t>>(j, "layers_to_transform", {}, kC, where);
  c->modules_to_save = string_list(j, "modules_to_save", where);
  c->validate();
  return c;
}

nlohmann::json AdaMixConfig::to_json() const {
  nlohmann::json j;
  write_common(j, common, peft_type());
  j["num_experts"] = num_experts;
  j["bottleneck_size"] = bottleneck_size;
  j["sharing_down"] = sharing_down;
  j["sharing_up"] = sharing_up;
  j["non_linearity"] = non_linearity;
  j["consistency_weight"] = consistency_weight;
  j["layers_to_transform"] = layers_to_transform;
  j["modules_to_save"] = modules_to_save.empty() ? nlohmann::json(nullptr) : nlohmann::json(modules_to_save);
  return j;
}

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
  return m;
}

}  // namespace peft::methods
