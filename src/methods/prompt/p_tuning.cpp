#include "peft/methods/prompt/p_tuning.h"

#include <torch/torch.h>

#include "prompt_fields.h"
#include "methods/config_fields.h"
#include "methods/method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "p_tuning";

void resolve(PTuningConfig& cfg, const models::ModelGeometry& g) {
  cfg.prompt.resolve(g, g.hidden_size, g.num_heads, kC);
  if (cfg.encoder_hidden_size == 0) cfg.encoder_hidden_size = cfg.prompt.token_dim;
}

torch::nn::Sequential prompt_encoder(const PTuningConfig& cfg) {
  const int64_t d = cfg.prompt.token_dim, h = cfg.encoder_hidden_size;
  torch::nn::Sequential s;
  if (cfg.encoder_reparameterization_type == "MLP") {
    s->push_back(torch::nn::Linear(d, h));
    s->push_back(torch::nn::ReLU());
    s->push_back(torch::nn::Linear(h, h));
    s->push_back(torch::nn::ReLU());
    s->push_back(torch::nn::Linear(h, d));
  } else {
    s->push_back(BiLstm(d, h, cfg.encoder_num_layers, cfg.encoder_dropout));
    s->push_back(torch::nn::Linear(2 * h, 2 * h));
    s->push_back(torch::nn::ReLU());
    s->push_back(torch::nn::Linear(2 * h, d));
  }
  return s;
}

void attach_p_tuning(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<PTuningConfig&>(base_cfg);
  const auto g = model.base_model().geometry();
  resolve(cfg, g);
  const auto opts = base_tensor_options(model);
  torch::nn::Sequential encoder{nullptr};
  if (!cfg.common.inference_mode) {
    encoder = prompt_encoder(cfg);
    encoder->to(opts.device(), opts.dtype().toScalarType());
  }
  const int64_t S = cfg.prompt.num_transformer_submodules;
  at::Tensor table = torch::randn({cfg.prompt.num_virtual_tokens * S, cfg.prompt.token_dim}, opts);
  model.attach_prompt_encoder(
      adapter, std::make_shared<nn::PromptEncoder>(table, encoder, nn::PromptPlacement::kInputEmbeddings, g, S));
  model.add_modules_to_save(adapter, cfg.prompt.modules_to_save);
}

int64_t count_p_tuning(const MethodConfig& base_cfg, const models::ModelGeometry& g) {
  auto cfg = dynamic_cast<const PTuningConfig&>(base_cfg);
  resolve(cfg, g);
  const int64_t d = cfg.prompt.token_dim, h = cfg.encoder_hidden_size;
  int64_t n = cfg.prompt.num_virtual_tokens * cfg.prompt.num_transformer_submodules * d;
  if (cfg.common.inference_mode) return n;
  if (cfg.encoder_reparameterization_type == "MLP") return n + (d * h + h) + (h * h + h) + (h * d + d);
  // Each LSTM layer and direction: 4 gates of W_ih [h, in], W_hh [h, h] and two biases.
  for (int64_t l = 0; l < cfg.encoder_num_layers; ++l) n += 2 * (4 * h * ((l == 0 ? d : 2 * h) + h) + 8 * h);
  return n + (2 * h * 2 * h + 2 * h) + (2 * h * d + d);
}

}  // namespace

BiLstmImpl::BiLstmImpl(int64_t in, int64_t hidden, int64_t layers, double dropout) {
  lstm = register_module(
      "lstm", torch::nn::LSTM(torch::nn::LSTMOptions(in, hidden).num_layers(layers).dropout(dropout).bidirectional(true)
                                  .batch_first(true)));
}

at::Tensor BiLstmImpl::forward(const at::Tensor& x) { return std::get<0>(lstm->forward(x.unsqueeze(0))).squeeze(0); }

namespace {
const std::vector<ConfigField<PTuningConfig>>& p_tuning_fields() {
  using C = PTuningConfig;
  static const std::vector<ConfigField<C>> f = with_prompt_learning_fields<C>({
      field("encoder_reparameterization_type", &C::encoder_reparameterization_type),
      written_as(field("encoder_hidden_size", &C::encoder_hidden_size), [](const C& c, nlohmann::json& j) {
         j["encoder_hidden_size"] = c.encoder_hidden_size > 0 ? nlohmann::json(c.encoder_hidden_size) : nlohmann::json(nullptr);
       }),
      field("encoder_num_layers", &C::encoder_num_layers),
      field("encoder_dropout", &C::encoder_dropout)});
  return f;
}
}  // namespace

std::shared_ptr<PTuningConfig> PTuningConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, p_tuning_fields(), kC, "P-tuning config");
  return c;
}

nlohmann::json PTuningConfig::to_json() const { return write_config(*this, p_tuning_fields()); }

void PTuningConfig::validate() const {
  prompt.validate(kC);
  const auto& t = encoder_reparameterization_type;
  PEFT_CHECK(t == "MLP" || t == "LSTM", kC, "encoder_reparameterization_type must be MLP or LSTM, found '{}'", t);
  PEFT_CHECK(encoder_hidden_size >= 0, kC, "encoder_hidden_size must be positive or null, found {}", encoder_hidden_size);
  PEFT_CHECK(encoder_num_layers > 0, kC, "encoder_num_layers must be positive, found {}", encoder_num_layers);
  PEFT_CHECK(encoder_dropout >= 0.0 && encoder_dropout < 1.0, kC, "encoder_dropout must be in [0, 1), found {}",
             encoder_dropout);
}

Method p_tuning_method() {
  Method m;
  m.name = "p_tuning";
  m.peft_type = "P_TUNING";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return PTuningConfig::from_json(j); };
  m.attach = attach_p_tuning;
  m.parameter_role = prompt_parameter_role;
  m.count = count_p_tuning;
  return m;
}

}  // namespace peft::methods
