#include "peft/methods/bottleneck_adapter.h"

#include <cmath>
#include <map>

#include <torch/torch.h>

#include "config_fields.h"
#include "method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/nn/per_sample.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "adapter";

/// Truncated normal by resampling out-of-range draws (Houlsby's init: std 1e-2 cut at ±2e-2).
void truncated_normal_(at::Tensor t, double std, double bound) {
  t.normal_(0.0, std);
  for (int i = 0; i < 100; ++i) {
    at::Tensor out = t.abs() > bound;
    if (!out.any().item<bool>()) return;
    t.masked_scatter_(out, torch::empty_like(t).normal_(0.0, std).masked_select(out));
  }
  t.clamp_(-bound, bound);
}

void attach_bottleneck(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<BottleneckAdapterConfig&>(base_cfg);
  cfg.validate();
  const int64_t hidden = model.base_model().hidden_size();
  const int64_t m = cfg.bottleneck(hidden);
  auto options = model.base_model().parameters().front().options();
  std::map<std::string, nn::BlockAdapters> blocks;
  for (auto& [path, slots] : model.base_model().block_adapters()) blocks.emplace(path, slots);
  int64_t cross = 0;
  for (const auto& path : selected_blocks(model, cfg.layers_to_transform, kC)) {
    std::vector<std::string> slots = cfg.slots();
    if (cfg.cross_adapter && blocks.count(path) && blocks.at(path)->offers("cross_attention")) {
      slots.insert(slots.begin() + (slots.front() == "attention" ? 1 : 0), "cross_attention");
      ++cross;
    }
    for (const auto& slot : slots)
      model.attach_block_adapter(adapter, path, slot,
                                 std::make_shared<BottleneckImpl>(hidden, m, cfg.activation(), cfg.scale(),
                                                                  cfg.parallel(), cfg.init_weights, options));
  }
  PEFT_CHECK(!cfg.cross_adapter || cross > 0, kC,
             "cross_adapter: {} has no cross-attention in the selected blocks (encoder-decoder decoders have one)",
             model.base_model().architecture());
  if (cfg.preset == "houlsby" || cfg.train_layer_norms) train_layer_norms(model, adapter);
  model.add_modules_to_save(adapter, cfg.modules_to_save);
}

}  // namespace

// ---- config ------------------------------------------------------------------

std::vector<std::string> BottleneckAdapterConfig::slots() const {
  if (preset == "pfeiffer") return {"ffn"};
  return {"attention", "ffn"};
}

std::string BottleneckAdapterConfig::activation() const {
  if (!non_linearity.empty()) return non_linearity;
  return preset == "houlsby" ? "swish" : "relu";
}

double BottleneckAdapterConfig::scale() const { return scaling > 0.0 ? scaling : (parallel() ? 4.0 : 1.0); }

int64_t BottleneckAdapterConfig::bottleneck(int64_t hidden) const {
  const int64_t m = bottleneck_size > 0 ? bottleneck_size : hidden / reduction_factor;
  PEFT_CHECK(m >= 1, kC, "bottleneck size is {} for hidden size {} (reduction_factor {}); lower reduction_factor or set "
             "bottleneck_size", m, hidden, reduction_factor);
  return m;
}

void BottleneckAdapterConfig::validate() const {
  PEFT_CHECK(preset == "houlsby" || preset == "pfeiffer" || preset == "parallel", kC,
             "preset must be \"houlsby\", \"pfeiffer\" or \"parallel\", found \"{}\"", preset);
  PEFT_CHECK(reduction_factor >= 1, kC, "reduction_factor must be >= 1, found {}", reduction_factor);
  PEFT_CHECK(bottleneck_size >= 0, kC, "bottleneck_size must be >= 0 (0: use reduction_factor), found {}",
             bottleneck_size);
  PEFT_CHECK(init_weights == "zero_up" || init_weights == "houlsby", kC,
             "init_weights must be \"zero_up\" or \"houlsby\", found \"{}\"", init_weights);
  PEFT_CHECK(scaling >= 0.0 && std::isfinite(scaling), kC, "scaling must be >= 0 (0: the preset's), found {}", scaling);
  nn::activation(activation());
  for (int64_t l : layers_to_transform) PEFT_CHECK(l >= 0, kC, "layers_to_transform entries must be >= 0, found {}", l);
}

namespace {
const std::vector<ConfigField<BottleneckAdapterConfig>>& bottleneck_adapter_fields() {
  using C = BottleneckAdapterConfig;
  static const std::vector<ConfigField<C>> f = {
      field("preset", &C::preset),
      field("reduction_factor", &C::reduction_factor),
      field("bottleneck_size", &C::bottleneck_size),
      written_as(field("non_linearity", &C::non_linearity), [](const C& c, nlohmann::json& j) { j["non_linearity"] = c.activation(); }),
      field("init_weights", &C::init_weights),
      written_as(field("scaling", &C::scaling), [](const C& c, nlohmann::json& j) { j["scaling"] = c.scale(); }),
      field("train_layer_norms", &C::train_layer_norms),
      // Written only when set, so configs without it stay as they were.
      written_as(field("cross_adapter", &C::cross_adapter), [](const C& c, nlohmann::json& j) {
        if (c.cross_adapter) j["cross_adapter"] = true;
      }),
      field("layers_to_transform", &C::layers_to_transform),
      string_list_field("modules_to_save", &C::modules_to_save)};
  return f;
}
}  // namespace

std::shared_ptr<BottleneckAdapterConfig> BottleneckAdapterConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, bottleneck_adapter_fields(), kC, "adapter config");
  c->validate();
  return c;
}

nlohmann::json BottleneckAdapterConfig::to_json() const { return write_config(*this, bottleneck_adapter_fields()); }

// ---- the module ----------------------------------------------------------------

BottleneckImpl::BottleneckImpl(int64_t hidden, int64_t bottleneck, const std::string& activation, double scaling,
                               bool parallel, const std::string& init, const at::TensorOptions& options)
    : act_(nn::activation(activation)), scaling_(scaling), parallel_(parallel) {
  down = register_module("down", torch::nn::Linear(hidden, bottleneck));
  up = register_module("up", torch::nn::Linear(bottleneck, hidden));
  torch::NoGradGuard no_grad;
  if (init == "houlsby") {
    for (auto* lin : {&down, &up}) {
      truncated_normal_((*lin)->weight, 1e-2, 2e-2);
      (*lin)->bias.zero_();
    }
  } else {  // zero_up: down keeps nn.Linear's init, up is zero: the adapter starts as the identity
    up->weight.zero_();
    up->bias.zero_();
  }
  to(options.device(), options.dtype().toScalarType());
}

at::Tensor BottleneckImpl::forward(const at::Tensor& input, const at::Tensor& output) {
  const at::Tensor& source = parallel_ ? input : output;
  at::Tensor h = source.scalar_type() == down->weight.scalar_type() ? source : source.to(down->weight.scalar_type());
  at::Tensor delta = nn::recorded_linear(act_(nn::recorded_linear(h, down->weight, down->bias)), up->weight, up->bias);
  if (scaling_ != 1.0) delta = delta * scaling_;
  return output + delta.to(output.scalar_type());
}

Method bottleneck_adapter_method() {
  Method m;
  m.name = "adapter";
  m.peft_type = "BOTTLENECK_ADAPTER";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return BottleneckAdapterConfig::from_json(j); };
  m.attach = attach_bottleneck;
  return m;
}

}  // namespace peft::methods
