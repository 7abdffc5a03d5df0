#include "peft/methods/prompt/prefix_tuning.h"

#include <torch/torch.h>

#include "prompt_fields.h"
#include "methods/config_fields.h"
#include "methods/method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "prefix_tuning";

/// Fills the model-dependent fields: a prefix has the key/value geometry.
void resolve(PrefixTuningConfig& cfg, const models::ModelGeometry& g) {
  cfg.prompt.resolve(g, g.num_kv_heads * g.head_dim, g.num_kv_heads, kC);
  if (cfg.encoder_hidden_size == 0) cfg.encoder_hidden_size = cfg.prompt.token_dim;
}

void attach_prefix_tuning(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<PrefixTuningConfig&>(base_cfg);
  const auto g = model.base_model().geometry();
  resolve(cfg, g);
  const auto opts = base_tensor_options(model);
  const int64_t p = cfg.prompt.num_virtual_tokens, d = cfg.prompt.token_dim, width = 2 * g.prefix_layers() * d;
  // HF initializes the embedding as nn.Embedding does, N(0, 1); the MLP as nn.Linear does.
  torch::nn::Sequential transform;
  at::Tensor table;
  if (cfg.prefix_projection && !cfg.common.inference_mode) {
    table = torch::randn({p, d}, opts);
    transform->push_back(torch::nn::Linear(d, cfg.encoder_hidden_size));
    transform->push_back(torch::nn::Tanh());
    transform->push_back(torch::nn::Linear(cfg.encoder_hidden_size, width));
    transform->to(opts.device(), opts.dtype().toScalarType());
    if (cfg.init_weights == "zero") {
      torch::NoGradGuard no_grad;
      for (auto& t : transform[2]->parameters()) t.zero_();
    }
  } else {
    table = cfg.init_weights == "zero" ? torch::zeros({p, width}, opts) : torch::randn({p, width}, opts);
  }
  model.attach_prompt_encoder(
      adapter, std::make_shared<nn::PromptEncoder>(table, transform, nn::PromptPlacement::kAttentionPrefix, g,
                                                  cfg.prompt.num_transformer_submodules));
  model.add_modules_to_save(adapter, cfg.prompt.modules_to_save);
}

int64_t count_prefix_tuning(const MethodConfig& base_cfg, const models::ModelGeometry& g) {
  auto cfg = dynamic_cast<const PrefixTuningConfig&>(base_cfg);
  resolve(cfg, g);
  const int64_t p = cfg.prompt.num_virtual_tokens, d = cfg.prompt.token_dim, h = cfg.encoder_hidden_size;
  const int64_t width = 2 * g.prefix_layers() * d;
  if (!cfg.prefix_projection || cfg.common.inference_mode) return p * width;
  return p * d + (d * h + h) + (h * width + width);
}

}  // namespace

namespace {
const std::vector<ConfigField<PrefixTuningConfig>>& prefix_tuning_fields() {
  using C = PrefixTuningConfig;
  static const std::vector<ConfigField<C>> f = with_prompt_learning_fields<C>({
      written_as(field("encoder_hidden_size", &C::encoder_hidden_size), [](const C& c, nlohmann::json& j) {
         j["encoder_hidden_size"] = c.encoder_hidden_size > 0 ? nlohmann::json(c.encoder_hidden_size) : nlohmann::json(nullptr);
       }),
      field("prefix_projection", &C::prefix_projection),
      // Written only when set: HF PEFT releases before init_weights refuse the key.
      written_as(field("init_weights", &C::init_weights), [](const C& c, nlohmann::json& j) {
        if (!c.init_weights.empty()) j["init_weights"] = c.init_weights;
      })});
  return f;
}
}  // namespace

std::shared_ptr<PrefixTuningConfig> PrefixTuningConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, prefix_tuning_fields(), kC, "prefix tuning config");
  return c;
}

nlohmann::json PrefixTuningConfig::to_json() const { return write_config(*this, prefix_tuning_fields()); }

void PrefixTuningConfig::validate() const {
  prompt.validate(kC);
  PEFT_CHECK(init_weights.empty() || init_weights == "zero", kC,
             "init_weights must be null (random) or \"zero\", found '{}'", init_weights);
  PEFT_CHECK(encoder_hidden_size >= 0, kC, "encoder_hidden_size must be positive or null, found {}", encoder_hidden_size);
}

Method prefix_tuning_method() {
  Method m;
  m.name = "prefix_tuning";
  m.peft_type = "PREFIX_TUNING";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return PrefixTuningConfig::from_json(j); };
  m.attach = attach_prefix_tuning;
  m.parameter_role = prompt_parameter_role;
  m.count = count_prefix_tuning;
  return m;
}

}  // namespace peft::methods
