#include "peft/methods/lora.h"

#include <cmath>
#include <optional>
#include <set>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"
#include "peft/core/strings.h"
#include "peft/nn/per_sample.h"
#include "peft/peft_model.h"
#include "config_fields.h"
#include "lora_combine.h"
#include "method_helpers.h"

namespace peft::methods {
namespace F = torch::nn::functional;
namespace {

constexpr const char* kC = "lora";

// Keys of newer HF PEFT releases that this implementation accepts only at their default value:
// a file that needs the feature is refused by name rather than silently mis-loaded.
const std::vector<std::pair<std::string, nlohmann::json>>& default_only_keys() {
  static const std::vector<std::pair<std::string, nlohmann::json>> k = {
      {"loftq_config", nlohmann::json::object()},
      {"megatron_config", nullptr},
      {"use_dora", false},
      {"lora_bias", false},
      {"layer_replication", nullptr},
      {"eva_config", nullptr},
      {"corda_config", nullptr},
      {"lora_ga_config", nullptr},
      {"velora_config", nullptr},
      {"monteclora_config", nullptr},
      {"trainable_token_indices", nullptr},
      {"target_parameters", nullptr},
      {"alora_invocation_tokens", nullptr},
      {"use_qalora", false},
      {"use_bdlora", nullptr},
      {"arrow_config", nullptr},
      {"runtime_config", nullptr},
      {"ensure_weight_tying", false},
  };
  return k;
}

// Keys that carry no meaning for this implementation and are accepted with any value.
const std::vector<std::string>& ignored_keys() {
  static const std::vector<std::string> k = {"megatron_core", "qalora_group_size"};
  return k;
}

/// HF writes whole-number floats as integers (lora_alpha 16, not 16.0).
nlohmann::json number(double v) {
  return (std::floor(v) == v && std::abs(v) < 9e15) ? nlohmann::json(static_cast<int64_t>(v)) : nlohmann::json(v);
}

const std::vector<ConfigField<LoraConfig>>& lora_fields() {
  using C = LoraConfig;
  static const std::vector<ConfigField<C>> f = {
      field("r", &C::r),
      written_as(field("lora_alpha", &C::lora_alpha), [](const C& c, nlohmann::json& j) { j["lora_alpha"] = number(c.lora_alpha); }),
      field("lora_dropout", &C::lora_dropout),
      targets_field("target_modules", &C::target_modules),
      optional_targets_field("exclude_modules", &C::exclude_modules),
      field("fan_in_fan_out", &C::fan_in_fan_out),
      field("bias", &C::bias),
      // written only when set: older HF PEFT rejects the key
      written_as(field("use_rslora", &C::use_rslora), [](const C& c, nlohmann::json& j) { if (c.use_rslora) j["use_rslora"] = true; }),
      {"init_lora_weights",  // true | false | "gaussian" | ...: kept as its string
       [](C& c, const nlohmann::json& j, const std::string&, const std::string&) {
         if (!j.contains("init_lora_weights")) return;
         const auto& v = j["init_lora_weights"];
         c.init_lora_weights = v.is_boolean() ? (v.get<bool>() ? "true" : "false") : v.is_string() ? v.get<std::string>() : v.dump();
       },
       [](const C& c, nlohmann::json& j) {
         j["init_lora_weights"] = c.init_lora_weights == "true"    ? nlohmann::json(true)
                                  : c.init_lora_weights == "false" ? nlohmann::json(false)
                                                                   : nlohmann::json(c.init_lora_weights);
       }},
      {"layers_to_transform",  // an int or a list
       [](C& c, const nlohmann::json& j, const std::string& component, const std::string& where) {
         if (!j.contains("layers_to_transform") || j["layers_to_transform"].is_null()) return;
         const auto& v = j["layers_to_transform"];
         PEFT_CHECK(v.is_number_integer() || v.is_array(), component,
                    "{}: layers_to_transform must be an int or a list, found {}", where, v.dump());
         c.layers_to_transform.clear();
         if (v.is_number_integer()) {
           c.layers_to_transform = {v.get<int64_t>()};
           return;
         }
         for (const auto& e : v) {
           PEFT_CHECK(e.is_number_integer(), component, "{}: layers_to_transform entries must be integers, found {}",
                      where, e.dump());
           c.layers_to_transform.push_back(e.get<int64_t>());
         }
       },
       [](const C& c, nlohmann::json& j) {
         j["layers_to_transform"] =
             c.layers_to_transform.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.layers_to_transform);
       }},
      written_as(string_list_field("layers_pattern", &C::layers_pattern),
                 [](const C& c, nlohmann::json& j) {
                   j["layers_pattern"] = c.layers_pattern.empty()       ? nlohmann::json(nullptr)
                                         : c.layers_pattern.size() == 1 ? nlohmann::json(c.layers_pattern[0])
                                                                        : nlohmann::json(c.layers_pattern);
                 }),
      string_list_field("modules_to_save", &C::modules_to_save),
      pattern_field("rank_pattern", &C::rank_pattern, [](int64_t v) { return nlohmann::json(v); }),
      pattern_field("alpha_pattern", &C::alpha_pattern, number)};
  return f;
}

TargetModules default_targets(const std::string& model_type) {
  TargetModules t = query_value_targets(model_type);
  PEFT_CHECK(!t.empty(), kC,
             "target_modules is not set and there is no default for model_type '{}'; list the modules to adapt",
             model_type);
  return t;
}

/// The first entry (in order) whose key matches the module, HF PEFT's get_pattern_key rule; null if none.
template <class T>
const std::pair<std::string, T>* pattern_entry(const std::vector<std::pair<std::string, T>>& pattern,
                                               const std::string& module) {
  for (const auto& kv : pattern)
    if (pattern_key(module, {kv.first})) return &kv;
  return nullptr;
}

template <class T>
std::optional<T> pattern_value(const std::vector<std::pair<std::string, T>>& pattern, const std::string& module) {
  const auto* entry = pattern_entry(pattern, module);
  return entry ? std::optional<T>(entry->second) : std::nullopt;
}

/// Puts `pattern`'s keys into the order of the object source[key] (keys it lacks go last).
template <class T>
void reorder(std::vector<std::pair<std::string, T>>& pattern, const nlohmann::ordered_json& source, const char* key) {
  if (!source.is_object() || !source.contains(key) || !source[key].is_object()) return;
  std::vector<std::pair<std::string, T>> ordered;
  for (auto it = source[key].begin(); it != source[key].end(); ++it)
    for (const auto& kv : pattern)
      if (kv.first == it.key()) ordered.push_back(kv);
  for (const auto& kv : pattern)
    if (!source[key].contains(kv.first)) ordered.push_back(kv);
  pattern = std::move(ordered);
}

/// Two keys matching one layer with different values: the first in order wins (HF PEFT's rule);
/// HF PEFT saves configs with sorted keys, so a hand-made order may not survive a save there.
template <class T>
void note_order_dependence(const std::vector<std::pair<std::string, T>>& pattern, const char* field,
                           const std::string& layer, std::set<std::string>& notes) {
  const auto* first = pattern_entry(pattern, layer);
  if (!first) return;
  for (const auto& [key, value] : pattern)
    if (key != first->first && value != first->second && pattern_key(layer, {key}))
      notes.insert(fmt::format("lora: {} keys '{}' and '{}' both match '{}' (and maybe more layers); '{}', first in "
                               "the config's order, decides; make the keys disjoint so that order does not matter",
                               field, first->first, key, layer, first->first));
}

void attach_lora(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<LoraConfig&>(base_cfg);
  cfg.validate();
  const TargetModules targets =
      cfg.target_modules.empty() ? default_targets(model.base_model().model_type()) : cfg.target_modules;
  const LayerSelection layers{cfg.layers_to_transform, cfg.layers_pattern};
  int matched = 0;
  std::set<std::string> adapted;  // adapted layers that have a bias
  std::set<std::string> order_notes;
  const auto heads = model.implicit_modules_to_save(cfg);
  for (auto& [name, lin] : model.linears()) {
    if (inside_any(name, cfg.modules_to_save) || inside_any(name, heads) || excluded(name, cfg.exclude_modules))
      continue;
    if (!matches_target(name, targets, layers)) continue;
    if (lin->fan_in_fan_out() && !cfg.fan_in_fan_out) {
      // As HF PEFT does: Conv1D layers imply fan_in_fan_out, and the saved config says so.
      log::warn("lora: fan_in_fan_out=false but '{}' stores its weight as [in, out] (Conv1D); setting "
                "fan_in_fan_out=true",
                name);
      cfg.fan_in_fan_out = true;
    }
    note_order_dependence(cfg.rank_pattern, "rank_pattern", name, order_notes);
    note_order_dependence(cfg.alpha_pattern, "alpha_pattern", name, order_notes);
    auto delta = std::make_shared<LoraDelta>(lin->in_features(), lin->out_features(), cfg.rank_for(name),
                                             cfg.scaling_for(name), cfg.lora_dropout, cfg.init_lora_weights,
                                             lin->weight.options());
    model.attach_linear_delta(adapter, name, delta);
    if (lin->bias.defined()) adapted.insert(name);
    ++matched;
  }
  for (const auto& note : order_notes) log::warn("{}", note);
  PEFT_CHECK(matched > 0, kC, "target_modules {} matched no layer of this {} model; adaptable layers: {}",
             targets.to_json().dump(), model.base_model().model_type(), describe_linears(model));
  // Biases train with bias "all" (every bias) or "lora_only" (those of the adapted layers). HF PEFT
  // (0.7 on) keys an adapted layer's bias as "<layer>.base_layer.bias" — the name it loads.
  for (const auto& name : model.base_parameter_names()) {
    if (cfg.bias == "none" || !core::ends_with(name, ".bias")) continue;
    const std::string layer = name.substr(0, name.size() - 5);
    if (adapted.count(layer)) model.add_trainable_base_tensor(adapter, name, layer + ".base_layer.bias");
    else if (cfg.bias == "all") model.add_trainable_base_tensor(adapter, name);
  }
  model.add_modules_to_save(adapter, cfg.modules_to_save);
}

}  // namespace

// ---- config ------------------------------------------------------------------

void LoraConfig::validate() const {
  PEFT_CHECK(r > 0, kC, "r must be a positive integer, found {}", r);
  PEFT_CHECK(std::isfinite(lora_alpha) && lora_alpha != 0.0, kC, "lora_alpha must be finite and non-zero, found {}",
             lora_alpha);
  PEFT_CHECK(lora_dropout >= 0.0 && lora_dropout < 1.0, kC, "lora_dropout must be in [0, 1), found {}", lora_dropout);
  PEFT_CHECK(bias == "none" || bias == "all" || bias == "lora_only", kC,
             "bias must be \"none\", \"all\" or \"lora_only\", found \"{}\"", bias);
  PEFT_CHECK(init_lora_weights == "true" || init_lora_weights == "false" || init_lora_weights == "gaussian", kC,
             "init_lora_weights must be true, false or \"gaussian\", found {}", init_lora_weights);
  PEFT_CHECK(layers_to_transform.empty() || !target_modules.regex, kC,
             "layers_to_transform only applies when target_modules is a list, not a regex");
  PEFT_CHECK(layers_pattern.empty() || !layers_to_transform.empty(), kC,
             "layers_pattern is set but layers_to_transform is not");
  for (const auto& [k, v] : rank_pattern) PEFT_CHECK(v > 0, kC, "rank_pattern['{}'] must be positive, found {}", k, v);
  for (int64_t l : layers_to_transform) PEFT_CHECK(l >= 0, kC, "layers_to_transform entries must be >= 0, found {}", l);
}

std::shared_ptr<LoraConfig> LoraConfig::from_json(const nlohmann::json& j) {
  const std::string where = "LoRA config";
  PEFT_CHECK(j.is_object(), kC, "{}: expected a JSON object", where);
  const auto keys = field_keys(lora_fields());
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (contains(keys, k) || contains(common_keys(), k) || contains(ignored_keys(), k)) continue;
    auto d = std::find_if(default_only_keys().begin(), default_only_keys().end(), [&](const auto& p) { return p.first == k; });
    if (d != default_only_keys().end()) {
      PEFT_CHECK(it.value() == d->second || (it.value().is_null() && d->second.is_object()), kC,
                 "{}: '{}' = {} is not supported (only {} is)", where, k, it.value().dump(), d->second.dump());
      continue;
    }
    fail(kC, fmt::format("{}: unknown key '{}' (LoRA keys: {})", where, k, fmt::join(keys, ", ")));
  }
  auto c = std::make_shared<LoraConfig>();
  if (j.contains("peft_type"))
    PEFT_CHECK(j["peft_type"] == "LORA", kC, "{}: peft_type must be \"LORA\", found {}", where, j["peft_type"].dump());
  read_common(j, c->common, where);
  for (const auto& f : lora_fields()) f.read(*c, j, kC, where);
  c->validate();
  return c;
}

nlohmann::json LoraConfig::to_json() const {
  nlohmann::json j = write_config(*this, lora_fields());
  // Fields HF PEFT 0.7 writes that this implementation holds only at their defaults.
  j["loftq_config"] = nlohmann::json::object();
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  return j;
}

void LoraConfig::follow_key_order(const nlohmann::ordered_json& source) {
  reorder(rank_pattern, source, "rank_pattern");
  reorder(alpha_pattern, source, "alpha_pattern");
}

nlohmann::ordered_json LoraConfig::to_file_json() const {
  auto j = nlohmann::ordered_json(to_json());
  auto in_order = [](const auto& pattern, auto write) {
    auto o = nlohmann::ordered_json::object();
    for (const auto& [k, v] : pattern) o[k] = write(v);
    return o;
  };
  j["rank_pattern"] = in_order(rank_pattern, [](int64_t v) { return nlohmann::ordered_json(v); });
  j["alpha_pattern"] = in_order(alpha_pattern, [](double v) { return nlohmann::ordered_json(number(v)); });
  return j;
}

int64_t LoraConfig::rank_for(const std::string& module_name) const {
  return pattern_value(rank_pattern, module_name).value_or(r);
}

double LoraConfig::scaling_for(const std::string& module_name) const {
  const double alpha = pattern_value(alpha_pattern, module_name).value_or(lora_alpha);
  const double rank = static_cast<double>(rank_for(module_name));
  return use_rslora ? alpha / std::sqrt(rank) : alpha / rank;
}

// ---- the delta -----------------------------------------------------------------

LoraDelta::LoraDelta(int64_t in_features, int64_t out_features, int64_t r, double scaling, double dropout,
                     const std::string& init, const at::TensorOptions& options)
    : scaling_(scaling), dropout_(dropout) {
  lora_A = register_module("lora_A", torch::nn::Linear(torch::nn::LinearOptions(in_features, r).bias(false)));
  lora_B = register_module("lora_B", torch::nn::Linear(torch::nn::LinearOptions(r, out_features).bias(false)));
  torch::NoGradGuard no_grad;
  if (init == "gaussian") {
    lora_A->weight.normal_(0.0, 1.0 / static_cast<double>(r));
    lora_B->weight.zero_();
  } else if (init == "true") {
    // kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(in), 1/sqrt(in)), as loralib and HF PEFT do.
    torch::nn::init::kaiming_uniform_(lora_A->weight, std::sqrt(5.0));
    lora_B->weight.zero_();
  }  // "false": both keep nn.Linear's random init (non-zero delta; for tests and experiments)
  to(options.device(), options.dtype().toScalarType());
}

at::Tensor LoraDelta::added_output(const at::Tensor& x, c10::ScalarType dtype) {
  at::Tensor h = x.scalar_type() == lora_A->weight.scalar_type() ? x : x.to(lora_A->weight.scalar_type());
  if (dropout_ > 0.0) h = F::dropout(h, F::DropoutFuncOptions().p(dropout_).training(is_training()));
  // (x A^T) B^T: never forms the [out, in] product during training.
  at::Tensor d = nn::recorded_linear(nn::recorded_linear(h, lora_A->weight), lora_B->weight) * scaling_;
  return d.to(dtype);
}

at::Tensor LoraDelta::adapt_output(const at::Tensor& x, const at::Tensor& y) { return y + added_output(x, y.scalar_type()); }

at::Tensor LoraDelta::delta_weight() const { return torch::mm(lora_B->weight, lora_A->weight) * scaling_; }

Method lora_method() {
  Method m;
  m.name = "lora";
  m.peft_type = "LORA";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return LoraConfig::from_json(j); };
  m.attach = attach_lora;
  m.combine = combine_lora;
  return m;
}

}  // namespace peft::methods
