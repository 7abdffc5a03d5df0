#include "lora_combine.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/strings.h"
#include "peft/methods/lora.h"
#include "peft/methods/task_merging.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "add_weighted_adapter";

const std::set<std::string>& factor_types() {  // combine A's and B's separately
  static const std::set<std::string> t = {"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"};
  return t;
}
const std::set<std::string>& svd_types() {  // combine the weight deltas, then factor them again
  static const std::set<std::string> t = {"svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"};
  return t;
}

bool uses_density(const std::string& type) {
  return type != "linear" && type != "cat" && type != "svd";
}

/// One combination of same-shaped tensors by `type` (its "_svd" suffix removed).
at::Tensor merge(const std::string& type, const std::vector<at::Tensor>& tensors, const std::vector<double>& weights,
                 const WeightedCombination& how, at::Generator& gen) {
  const std::string base = core::ends_with(type, "_svd") ? type.substr(0, type.size() - 4) : type;
  if (base == "linear" || base == "svd") return merging::task_arithmetic(tensors, weights);
  const double density = *how.density;
  if (base == "ties") return merging::ties(tensors, weights, density, how.majority_sign_method);
  if (base == "dare_linear") return merging::dare_linear(tensors, weights, density, gen);
  if (base == "dare_ties") return merging::dare_ties(tensors, weights, density, how.majority_sign_method, gen);
  return merging::magnitude_prune(tensors, weights, density);
}

/// The union of the sources' target_modules (lists joined, regexes alternated), as HF PEFT.
TargetModules union_targets(const std::vector<const LoraConfig*>& configs) {
  TargetModules out;
  const bool regex = configs.front()->target_modules.regex.has_value();
  std::vector<std::string> alternatives;
  for (const auto* c : configs) {
    PEFT_CHECK(c->target_modules.regex.has_value() == regex, kC,
               "the adapters' target_modules mix a regex and a list; combine adapters of one form");
    if (regex) {
      alternatives.push_back("(" + *c->target_modules.regex + ")");
    } else {
      for (const auto& n : c->target_modules.names)
        if (std::find(out.names.begin(), out.names.end(), n) == out.names.end()) out.names.push_back(n);
    }
  }
  if (regex) out.regex = fmt::format("{}", fmt::join(alternatives, "|"));
  return out;
}

/// The new [B, A] of one layer from the sources that adapt it.
std::pair<at::Tensor, at::Tensor> combine_layer(const std::string& type, int64_t new_rank,
                                                const std::vector<std::shared_ptr<LoraDelta>>& deltas,
                                                const std::vector<double>& weights, const WeightedCombination& how,
                                                at::Generator& gen) {
  const auto f32 = [](const at::Tensor& t) { return t.detach().to(torch::kFloat); };
  if (type == "cat") {
    std::vector<at::Tensor> as, bs;
    for (size_t i = 0; i < deltas.size(); ++i) {
      as.push_back(f32(deltas[i]->lora_A->weight) * (weights[i] * deltas[i]->scaling()));
      bs.push_back(f32(deltas[i]->lora_B->weight));
    }
    return {torch::cat(bs, 1), torch::cat(as, 0)};
  }
  if (svd_types().count(type)) {
    std::vector<at::Tensor> dw;
    for (const auto& d : deltas) dw.push_back(f32(d->delta_weight()));  // s·B·A as [out, in]
    const at::Tensor delta = merge(type, dw, weights, how, gen);
    auto [U, S, Vh] = torch::linalg_svd(delta, how.svd_full_matrices);
    const int64_t r = std::min<int64_t>(new_rank, S.size(0));
    at::Tensor B = U.narrow(1, 0, r) * S.narrow(0, 0, r).unsqueeze(0);
    at::Tensor A = Vh.narrow(0, 0, r);
    if (how.svd_clamp) {
      const double hi = torch::quantile(torch::cat({B.flatten(), A.flatten()}), *how.svd_clamp).item<double>();
      B = B.clamp(-hi, hi);
      A = A.clamp(-hi, hi);
    }
    return {B, A};
  }
  // Factor-wise: A's and B's each merged with weight √|w·s| (the sign on A), so B'A' ≈ Σ w s B A.
  std::vector<at::Tensor> as, bs;
  std::vector<double> wa, wb;
  for (size_t i = 0; i < deltas.size(); ++i) {
    const double ws = weights[i] * deltas[i]->scaling();
    const double root = std::sqrt(std::abs(ws));
    wa.push_back(ws < 0 ? -root : root);
    wb.push_back(root);
    as.push_back(f32(deltas[i]->lora_A->weight));
    bs.push_back(f32(deltas[i]->lora_B->weight));
  }
  at::Tensor A = merge(type, as, wa, how, gen);
  at::Tensor B = merge(type, bs, wb, how, gen);
  return {B, A};
}

}  // namespace

void combine_lora(PeftModel& model, const std::vector<std::string>& sources, const std::vector<double>& weights,
                  const std::string& target, const WeightedCombination& how) {
  const std::string type = sources.size() == 1 ? "linear" : how.combination_type;
  PEFT_CHECK(type == "cat" || factor_types().count(type) || svd_types().count(type), kC,
             "combination_type '{}' is not one of linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune, "
             "ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd",
             type);
  if (uses_density(type))
    PEFT_CHECK(how.density && *how.density > 0.0 && *how.density <= 1.0, kC,
               "combination_type '{}' needs a density in (0, 1] (the fraction of entries kept){}", type,
               how.density ? fmt::format(", found {}", *how.density) : "");
  PEFT_CHECK(how.majority_sign_method == "total" || how.majority_sign_method == "frequency", kC,
             "majority_sign_method must be 'total' or 'frequency', found '{}'", how.majority_sign_method);
  PEFT_CHECK(!how.svd_rank || *how.svd_rank > 0, kC, "svd_rank must be positive, found {}", how.svd_rank.value_or(0));
  PEFT_CHECK(!how.svd_clamp || (*how.svd_clamp > 0.0 && *how.svd_clamp <= 1.0), kC,
             "svd_clamp is a quantile in (0, 1], found {}", how.svd_clamp.value_or(0.0));
  std::vector<const LoraConfig*> configs;
  std::vector<int64_t> ranks;
  for (const auto& s : sources) {
    const auto* c = dynamic_cast<const LoraConfig*>(&model.adapter_config(s));
    PEFT_CHECK(c != nullptr, kC, "adapter '{}' is not a LoRA adapter", s);
    PEFT_CHECK(c->rank_pattern.empty() && c->alpha_pattern.empty(), kC,
               "adapter '{}' has a rank_pattern / alpha_pattern; weighted combinations take one rank per adapter", s);
    configs.push_back(c);
    ranks.push_back(c->r);
  }
  int64_t new_rank = ranks.front();
  if (factor_types().count(type)) {
    PEFT_CHECK(std::all_of(ranks.begin(), ranks.end(), [&](int64_t r) { return r == ranks.front(); }), kC,
               "combination_type '{}' needs adapters of one rank, found r = {}; use cat or svd", type,
               fmt::join(ranks, ", "));
  } else if (type == "cat") {
    new_rank = 0;
    for (int64_t r : ranks) new_rank += r;
  } else {
    new_rank = how.svd_rank.value_or(*std::max_element(ranks.begin(), ranks.end()));
  }
  auto config = std::make_shared<LoraConfig>(*configs.front());
  config->r = new_rank;
  config->lora_alpha = static_cast<double>(new_rank);  // scaling 1: the factors carry everything
  config->use_rslora = false;
  config->target_modules = union_targets(configs);
  config->common.inference_mode = true;

  // Trained copies of base tensors (modules_to_save, biases) come from the one source that has them.
  std::map<std::string, std::string> copy_owner;
  std::map<std::string, std::map<std::string, at::Tensor>> states;
  for (const auto& s : sources) states[s] = model.adapter_state_dict(s);
  model.add_adapter_without_data(target, *config);
  auto fresh = model.adapter_state_dict(target);
  torch::NoGradGuard no_grad;
  for (auto& [key, t] : fresh) {
    if (key.find(".lora_A.") != std::string::npos || key.find(".lora_B.") != std::string::npos) continue;
    std::vector<std::string> owners;
    for (const auto& s : sources)
      if (states[s].count(key)) owners.push_back(s);
    PEFT_CHECK(owners.size() <= 1, kC, "adapters '{}' each train their own '{}'; such copies cannot be combined",
               fmt::join(owners, "', '"), key);
    if (owners.size() == 1) t.copy_(states[owners.front()].at(key));
  }
  auto gen = at::make_generator<at::CPUGeneratorImpl>(how.seed);
  for (const auto& [path, lin] : model.linears()) {
    auto out = std::dynamic_pointer_cast<LoraDelta>(lin->delta(target));
    if (!out) continue;
    std::vector<std::shared_ptr<LoraDelta>> deltas;
    std::vector<double> w;
    for (size_t i = 0; i < sources.size(); ++i)
      if (auto d = std::dynamic_pointer_cast<LoraDelta>(lin->delta(sources[i]))) {
        deltas.push_back(d);
        w.push_back(weights[i]);
      }
    out->lora_A->weight.zero_();
    out->lora_B->weight.zero_();
    if (deltas.empty()) continue;
    auto [B, A] = combine_layer(type, new_rank, deltas, w, how, gen);
    out->lora_B->weight.narrow(1, 0, B.size(1)).copy_(B);
    out->lora_A->weight.narrow(0, 0, A.size(0)).copy_(A);
  }
}

}  // namespace peft::methods
