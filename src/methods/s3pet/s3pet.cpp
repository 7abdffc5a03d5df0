#include "peft/nn/layer_norm.h"
#include "peft/methods/s3pet/s3pet.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <torch/torch.h>

#include "methods/config_fields.h"
#include "methods/method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/strings.h"
#include "peft/methods/prompt/prompt_learning.h"
#include "peft/nn/rms_norm.h"
#include "peft/peft_model.h"
#include "s3pet_modules.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "s3pet";
const std::vector<std::string> kKinds = {"lora", "bias", "ln", "adapter"};

/// Every norm of the backbone but the embeddings', by module name.
std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> norms(PeftModel& model) {
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> out;
  for (const auto& item : model.base_model().named_modules("", false)) {
    const std::string& name = item.key();
    if (name.find("embeddings") != std::string::npos || name.rfind("side_network", 0) == 0 ||
        name.rfind("prompt_encoder", 0) == 0)
      continue;
    if (std::dynamic_pointer_cast<nn::LayerNormImpl>(item.value()) ||
        std::dynamic_pointer_cast<nn::RMSNormImpl>(item.value()))
      out.emplace_back(name, item.value());
  }
  return out;
}

NormSlot norm_slot(const std::shared_ptr<torch::nn::Module>& m, int64_t gate) {
  NormSlot slot;
  slot.module = m;
  slot.gate = gate;
  if (auto ln = std::dynamic_pointer_cast<nn::LayerNormImpl>(m)) {
    slot.weight_member = &ln->weight;
    slot.bias_member = ln->bias.defined() ? &ln->bias : nullptr;
  } else {
    slot.weight_member = &std::dynamic_pointer_cast<nn::RMSNormImpl>(m)->weight;
  }
  slot.weight = *slot.weight_member;
  if (slot.bias_member) slot.bias = *slot.bias_member;
  return slot;
}

/// Every candidate of the given kinds, in model order.
std::vector<S3petCandidate> enumerate(PeftModel& model, const S3petConfig& cfg, const std::vector<std::string>& kinds) {
  std::vector<S3petCandidate> out;
  auto wanted = [&](const char* k) { return contains(kinds, k); };
  for (const auto& [name, lin] : model.linears()) {
    if (!inside_block(model, name)) continue;
    if (wanted("lora")) out.push_back({"lora", name, "", cfg.lora_rank * (lin->in_features() + lin->out_features())});
    if (wanted("bias")) out.push_back({"bias", name, "", lin->out_features()});
  }
  if (wanted("ln"))
    for (const auto& [name, m] : norms(model)) {
      int64_t n = 0;
      for (const auto& p : m->parameters(false)) n += p.numel();
      out.push_back({"ln", name, "", n});
    }
  if (wanted("adapter")) {
    const int64_t d = model.base_model().hidden_size(), m = cfg.adapter_size;
    for (const auto& [path, block] : model.blocks())
      for (const auto& slot : nn::BlockAdaptersImpl::slots())
        if (block->offers(slot)) out.push_back({"adapter", path, slot, 2 * d * m + m + d});
  }
  return out;
}

/// The structure entry's candidate: module names match in full or by a trailing dotted suffix.
S3petCandidate resolve(const std::vector<S3petCandidate>& all, const S3petCandidate& want, size_t index) {
  std::vector<const S3petCandidate*> found;
  for (const auto& c : all)
    if (c.kind == want.kind && (want.slot.empty() || c.slot == want.slot) &&
        (c.module == want.module || core::ends_with(c.module, "." + want.module)))
      found.push_back(&c);
  PEFT_CHECK(!found.empty(), kC, "structure[{}]: no {} candidate at '{}'{}", index, want.kind, want.module,
             want.slot.empty() ? "" : " slot " + want.slot);
  PEFT_CHECK(found.size() == 1, kC, "structure[{}]: '{}' matches {} {} candidates ('{}', '{}', ...); give the full name",
             index, want.module, found.size(), want.kind, found[0]->module, found[1]->module);
  return *found.front();
}

void attach_s3pet(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<S3petConfig&>(base_cfg);
  const auto opts = base_tensor_options(model);
  const bool searching = cfg.structure.empty();
  std::vector<S3petCandidate> modules;
  if (searching) {
    modules = enumerate(model, cfg, cfg.search_space);
    PEFT_CHECK(!modules.empty(), kC, "search_space {} has no candidate in this {} model",
               nlohmann::json(cfg.search_space).dump(), model.base_model().model_type());
  } else {
    const auto all = enumerate(model, cfg, kKinds);
    for (size_t i = 0; i < cfg.structure.size(); ++i) {
      modules.push_back(resolve(all, cfg.structure[i], i));
      for (size_t j = 0; j + 1 < modules.size(); ++j)
        PEFT_CHECK(modules[j].kind != modules.back().kind || modules[j].module != modules.back().module ||
                       modules[j].slot != modules.back().slot,
                   kC, "structure[{}] repeats {} at '{}'", i, modules.back().kind, modules.back().module);
    }
    cfg.structure = modules;  // full names and counts, as attached
  }
  auto bank = searching ? std::make_shared<GateBank>() : nullptr;
  std::map<std::string, std::shared_ptr<S3petLinearDelta>> deltas;
  std::vector<NormSlot> slots;
  const auto all_norms = norms(model);
  for (size_t i = 0; i < modules.size(); ++i) {
    const auto& c = modules[i];
    const int64_t gate = searching ? static_cast<int64_t>(i) : -1;
    if (c.kind == "lora" || c.kind == "bias") {
      auto& delta = deltas[c.module];
      if (!delta) {
        for (const auto& [name, lin] : model.linears())
          if (name == c.module)
            delta = std::make_shared<S3petLinearDelta>(lin->in_features(), lin->out_features(), lin->bias.defined(), bank,
                                                       opts);
      }
      if (c.kind == "lora") delta->add_lora(cfg.lora_rank, cfg.lora_alpha, gate);
      else delta->add_bias(gate);
    } else if (c.kind == "adapter") {
      model.attach_block_adapter(adapter, c.module, c.slot,
                                 std::make_shared<S3petAdapter>(model.base_model().hidden_size(), cfg.adapter_size,
                                                                bank, gate, opts));
    } else {  // ln
      for (const auto& [name, m] : all_norms) {
        if (name != c.module) continue;
        if (searching) {
          slots.push_back(norm_slot(m, gate));
        } else {
          for (const auto& p : m->named_parameters(false)) model.add_trainable_base_tensor(adapter, name + "." + p.key());
        }
      }
    }
  }
  for (auto& [name, delta] : deltas) model.attach_linear_delta(adapter, name, delta);
  if (searching)
    model.attach_side_network(adapter, std::make_shared<S3petController>(modules, std::move(slots), cfg,
                                                                         s3pet_budget(model, cfg), bank, opts));
}

S3petCandidate candidate_from_json(const nlohmann::json& j, const std::string& where) {
  PEFT_CHECK(j.is_object(), kC, "{}: expected an object {{\"kind\", \"module\"[, \"slot\"]}}, found {}", where, j.dump());
  core::reject_unknown_keys(j, {"kind", "module", "slot", "params"}, kC, where);
  S3petCandidate c;
  c.kind = core::get_or<std::string>(j, "kind", "", kC, where);
  c.module = core::get_or<std::string>(j, "module", "", kC, where);
  c.slot = core::get_or<std::string>(j, "slot", "", kC, where);
  c.params = core::get_or<int64_t>(j, "params", 0, kC, where);
  PEFT_CHECK(contains(kKinds, c.kind), kC, "{}: kind must be one of {}, found '{}'", where, fmt::join(kKinds, ", "), c.kind);
  PEFT_CHECK(!c.module.empty(), kC, "{}: module is required", where);
  const auto& slots = nn::BlockAdaptersImpl::slots();
  PEFT_CHECK(c.kind == "adapter" ? contains(slots, c.slot) : c.slot.empty(), kC,
             "{}: slot is one of {} for adapters (cross_attention in an encoder-decoder's decoder blocks) and absent "
             "otherwise, found '{}'",
             where, fmt::join(slots, ", "), c.slot);
  return c;
}

}  // namespace

nlohmann::json S3petCandidate::to_json() const {
  nlohmann::json j = {{"kind", kind}, {"module", module}};
  if (!slot.empty()) j["slot"] = slot;
  if (params > 0) j["params"] = params;
  return j;
}

std::vector<S3petCandidate> s3pet_candidates(PeftModel& model, const S3petConfig& config) {
  return enumerate(model, config, config.search_space);
}

int64_t s3pet_budget(PeftModel& model, const S3petConfig& config) {
  const auto n = static_cast<double>(model.base_parameter_count());
  return static_cast<int64_t>(std::floor(config.budget * n));
}

std::vector<S3petCandidate> s3pet_fit_budget(const std::vector<S3petCandidate>& ordered, int64_t budget) {
  std::vector<S3petCandidate> out;
  int64_t used = 0;
  for (const auto& c : ordered)
    if (used + c.params <= budget) {
      out.push_back(c);
      used += c.params;
    }
  return out;
}

namespace {
/// The search settings, one nested object.
const std::vector<ConfigField<S3petSearchSettings>>& search_fields() {
  using S = S3petSearchSettings;
  static const std::vector<ConfigField<S>> f = {
      field("strategy", &S::strategy), field("steps", &S::steps),   field("lr", &S::lr),
      field("alpha_lr", &S::alpha_lr), field("validation_fraction", &S::validation_fraction),
      field("second_order", &S::second_order), field("seed", &S::seed), field("log_every", &S::log_every)};
  return f;
}

void read_search(S3petConfig& c, const nlohmann::json& j, const std::string& component, const std::string& where) {
  if (!j.contains("search") || j["search"].is_null()) return;
  const auto& s = j["search"];
  const std::string sw = where + " search";
  PEFT_CHECK(s.is_object(), component, "{}: expected an object", sw);
  const auto keys = field_keys(search_fields());
  for (auto it = s.begin(); it != s.end(); ++it)
    PEFT_CHECK(contains(keys, it.key()), component, "{}: unknown key '{}' (known keys: {})", sw, it.key(),
               fmt::join(keys, ", "));
  for (const auto& f : search_fields()) f.read(c.search, s, component, sw);
}

void write_search(const S3petConfig& c, nlohmann::json& j) {
  nlohmann::json s = nlohmann::json::object();
  for (const auto& f : search_fields()) f.write(c.search, s);
  j["search"] = s;
}

const std::vector<ConfigField<S3petConfig>>& s3pet_fields() {
  using C = S3petConfig;
  static const std::vector<ConfigField<C>> f = {
      field("budget", &C::budget),
      {"search_space",
       [](C& c, const nlohmann::json& j, const std::string&, const std::string& where) {
         if (j.contains("search_space")) c.search_space = string_list(j, "search_space", where);
       },
       [](const C& c, nlohmann::json& j) { j["search_space"] = c.search_space; }},
      field("lora_rank", &C::lora_rank),
      field("lora_alpha", &C::lora_alpha),
      field("adapter_size", &C::adapter_size),
      field("beta", &C::beta),
      field("shift_gradient", &C::shift_gradient),
      {"search", read_search, write_search},
      {"structure",
       [](C& c, const nlohmann::json& j, const std::string& component, const std::string& where) {
         if (!j.contains("structure") || j["structure"].is_null()) return;
         PEFT_CHECK(j["structure"].is_array(), component, "{}: structure must be a list of modules", where);
         for (size_t i = 0; i < j["structure"].size(); ++i)
           c.structure.push_back(candidate_from_json(j["structure"][i], fmt::format("{} structure[{}]", where, i)));
       },
       [](const C& c, nlohmann::json& j) {
         j["structure"] = nlohmann::json::array();
         for (const auto& m : c.structure) j["structure"].push_back(m.to_json());
       }}};
  return f;
}
}  // namespace

std::shared_ptr<S3petConfig> S3petConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, s3pet_fields(), kC, "s3pet config");
  return c;
}

nlohmann::json S3petConfig::to_json() const { return write_config(*this, s3pet_fields()); }

void S3petConfig::validate() const {
  PEFT_CHECK(budget > 0 && budget <= 1, kC, "budget (a fraction of the backbone's parameters) must be in (0, 1], found {}",
             budget);
  PEFT_CHECK(!search_space.empty(), kC, "search_space must name at least one of {}", fmt::join(kKinds, ", "));
  for (const auto& k : search_space)
    PEFT_CHECK(contains(kKinds, k), kC, "search_space: unknown kind '{}' (kinds: {})", k, fmt::join(kKinds, ", "));
  PEFT_CHECK(lora_rank >= 1, kC, "lora_rank must be >= 1, found {}", lora_rank);
  PEFT_CHECK(adapter_size >= 1, kC, "adapter_size must be >= 1, found {}", adapter_size);
  PEFT_CHECK(std::isfinite(lora_alpha) && lora_alpha > 0, kC, "lora_alpha must be > 0, found {}", lora_alpha);
  PEFT_CHECK(std::isfinite(beta) && beta > 0, kC, "beta must be > 0, found {}", beta);
  PEFT_CHECK(shift_gradient == "detach" || shift_gradient == "implicit", kC,
             "shift_gradient must be \"detach\" or \"implicit\", found '{}'", shift_gradient);
  const auto& s = search;
  PEFT_CHECK(s.strategy == "darts" || s.strategy == "random", kC,
             "search.strategy must be \"darts\" or \"random\", found '{}'", s.strategy);
  PEFT_CHECK(s.steps >= 1, kC, "search.steps must be >= 1, found {}", s.steps);
  PEFT_CHECK(s.lr > 0 && s.alpha_lr > 0, kC, "search.lr and search.alpha_lr must be > 0, found {} and {}", s.lr,
             s.alpha_lr);
  PEFT_CHECK(s.validation_fraction > 0 && s.validation_fraction < 1, kC,
             "search.validation_fraction must be in (0, 1), found {}", s.validation_fraction);
  PEFT_CHECK(s.log_every >= 0, kC, "search.log_every must be >= 0, found {}", s.log_every);
}

Method s3pet_method() {
  Method m;
  m.name = "s3pet";
  m.peft_type = "S3PET";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return S3petConfig::from_json(j); };
  m.attach = attach_s3pet;
  m.data_needs = [](const MethodConfig& c) {
    DataNeeds needs;
    needs.plan = dynamic_cast<const S3petConfig&>(c).structure.empty();
    needs.reason = "no structure (the structure search trains on training batches)";
    return needs;
  };
  m.plan = [](PeftModel& model, const MethodConfig& c, const data::BatchSource& batches) -> std::shared_ptr<MethodConfig> {
    return s3pet_find_structure(model, dynamic_cast<const S3petConfig&>(c), batches);
  };
  m.plan_file = "structure.json";
  return m;
}

}  // namespace peft::methods
