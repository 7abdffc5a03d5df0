#include "peft/methods/llama_adapter.h"
#include "peft/methods/prompt/prompt_learning.h"

#include <torch/torch.h>

#include "config_fields.h"
#include "method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/strings.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "llama_adapter";

int64_t layers_used(const LlamaAdapterConfig& cfg, int64_t available) {
  return cfg.adapter_layers == 0 ? available : cfg.adapter_layers;
}

void attach_llama_adapter(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<LlamaAdapterConfig&>(base_cfg);
  // Its gated prompt attends in a block's own self-attention; HF PEFT defines it for decoder
  // stacks only and no paper places it in an encoder-decoder.
  PEFT_CHECK(!model.base_model().geometry().encoder_decoder, kC,
             "ADAPTION_PROMPT (LLaMA-Adapter) does not apply to the encoder-decoder {} model; use PREFIX_TUNING, "
             "PROMPT_TUNING or P_TUNING for its attention or inputs",
             model.base_model().model_type());
  std::vector<std::string> targets, all;
  for (const auto& [path, holder] : model.attention_layers()) {
    all.push_back(path);
    if (cfg.target_modules.empty() || core::is_or_ends_with_segment(path, cfg.target_modules)) targets.push_back(path);
  }
  PEFT_CHECK(!targets.empty(), kC, "target_modules '{}' names no attention layer of this {} model (they are named like '{}')",
             cfg.target_modules, model.base_model().model_type(), all.empty() ? "" : all.front());
  const int64_t n = layers_used(cfg, static_cast<int64_t>(targets.size()));
  PEFT_CHECK(n <= static_cast<int64_t>(targets.size()), kC, "adapter_layers is {}, but the model has {} attention layers",
             n, targets.size());
  cfg.adapter_layers = n;
  const auto g = model.base_model().geometry();
  const auto opts = base_tensor_options(model);
  for (size_t i = targets.size() - static_cast<size_t>(n); i < targets.size(); ++i)
    model.attach_attention_adapter(adapter, targets[i],
                                   std::make_shared<AdaptionPrompt>(cfg.adapter_len, g.hidden_size, g.num_heads,
                                                                    cfg.gate == "per_head_tanh", opts));
}

int64_t count_llama_adapter(const MethodConfig& base_cfg, const models::ModelGeometry& g) {
  const auto& cfg = dynamic_cast<const LlamaAdapterConfig&>(base_cfg);
  const int64_t layers = layers_used(cfg, g.num_layers);
  return layers * (cfg.adapter_len * g.hidden_size + (cfg.gate == "per_head_tanh" ? g.num_heads : 1));
}

}  // namespace

AdaptionPrompt::AdaptionPrompt(int64_t adapter_len, int64_t hidden, int64_t gate_heads, bool tanh_gate,
                               const at::TensorOptions& options)
    : tanh_gate_(tanh_gate) {
  adaption_prompt = register_parameter("adaption_prompt", torch::randn({1, adapter_len, hidden}, options));
  adaption_gate = register_parameter(
      "adaption_gate", tanh_gate ? torch::zeros({1, gate_heads, 1, 1}, options) : torch::zeros({1}, options));
}

at::Tensor AdaptionPrompt::forward(const nn::AttentionView& view) {
  const at::Tensor& q = view.queries;
  auto [k, v] = view.key_value(adaption_prompt.to(q.scalar_type()));  // [1, heads, K, head_dim]
  at::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / view.score_divisor;
  // A softmax over the prompts alone (no mask: every token sees them), in float32 for half types as HF does.
  const bool upcast = c10::elementSize(scores.scalar_type()) < 4;
  at::Tensor probs = upcast ? torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type()) : torch::softmax(scores, -1);
  at::Tensor gate = tanh_gate_ ? torch::tanh(adaption_gate) : adaption_gate;
  return torch::matmul(gate.to(q.scalar_type()) * probs, v);
}

namespace {
const std::vector<ConfigField<LlamaAdapterConfig>>& llama_adapter_fields() {
  using C = LlamaAdapterConfig;
  static const std::vector<ConfigField<C>> f = {
      field("adapter_len", &C::adapter_len),
      written_as(field("adapter_layers", &C::adapter_layers), [](const C& c, nlohmann::json& j) {
         j["adapter_layers"] = c.adapter_layers > 0 ? nlohmann::json(c.adapter_layers) : nlohmann::json(nullptr);
       }),
      written_as(field("target_modules", &C::target_modules), [](const C& c, nlohmann::json& j) {
         j["target_modules"] = c.target_modules.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.target_modules);
       }),
      // HF PEFT knows no such key; its files have the scalar gate
      written_as(field("gate", &C::gate), [](const C& c, nlohmann::json& j) { if (c.gate != "scalar") j["gate"] = c.gate; })};
  return f;
}
}  // namespace

std::shared_ptr<LlamaAdapterConfig> LlamaAdapterConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, llama_adapter_fields(), kC, "LLaMA-Adapter (ADAPTION_PROMPT) config");
  return c;
}

nlohmann::json LlamaAdapterConfig::to_json() const { return write_config(*this, llama_adapter_fields()); }

void LlamaAdapterConfig::validate() const {
  PEFT_CHECK(adapter_len > 0, kC, "adapter_len must be positive, found {}", adapter_len);
  PEFT_CHECK(adapter_layers >= 0, kC, "adapter_layers must be positive (or 0/null for every layer), found {}",
             adapter_layers);
  PEFT_CHECK(gate == "scalar" || gate == "per_head_tanh", kC, "gate must be scalar or per_head_tanh, found '{}'", gate);
}

Method llama_adapter_method() {
  Method m;
  m.name = "llama_adapter";
  m.peft_type = "ADAPTION_PROMPT";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return LlamaAdapterConfig::from_json(j); };
  m.attach = attach_llama_adapter;
  m.parameter_role = [](const std::string& p) {
    if (core::ends_with(p, ".adaption_gate")) return std::string("gate");
    return core::ends_with(p, ".adaption_prompt") ? std::string("prompt") : std::string();
  };
  m.count = count_llama_adapter;
  return m;
}

}  // namespace peft::methods
