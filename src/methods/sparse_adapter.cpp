#include "peft/methods/sparse_adapter.h"

#include <cmath>

#include <torch/torch.h>

#include "config_fields.h"
#include "method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"
#include "peft/data/batch_source.h"
#include "peft/methods/bottleneck_adapter.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "sparse_adapter";

at::Tensor pack_bits(const at::Tensor& keep) {
  at::Tensor flat = keep.flatten().to(torch::kUInt8);
  const int64_t n = flat.numel(), padded = (n + 7) / 8 * 8;
  flat = torch::cat({flat, torch::zeros({padded - n}, torch::kUInt8)}).view({-1, 8});
  at::Tensor weights = torch::tensor({1, 2, 4, 8, 16, 32, 64, 128}, torch::kUInt8);
  return (flat * weights).sum(1).to(torch::kUInt8);
}

at::Tensor unpack_bits(const at::Tensor& bits, at::IntArrayRef shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  at::Tensor weights = torch::tensor({1, 2, 4, 8, 16, 32, 64, 128}, bits.options());
  return bits.unsqueeze(-1).bitwise_and(weights).ne(0).flatten().slice(0, 0, n).view(shape);
}

struct Masked {
  std::string name;
  torch::nn::Linear linear;
};

/// The adapter's pruned matrices: every down/up projection of its block adapters.
std::vector<Masked> matrices(PeftModel& model, const std::string& adapter) {
  std::vector<Masked> out;
  for (const auto& [path, block] : model.blocks())
    for (const auto& item : block->named_modules("", false)) {
      if (item.key().rfind(adapter + ".", 0) != 0) continue;
      if (auto lin = std::dynamic_pointer_cast<torch::nn::LinearImpl>(item.value()))
        out.push_back({path + "." + item.key(), torch::nn::Linear(lin)});
    }
  return out;
}

/// Keeps the highest-scoring (1 - pruned_fraction) entries — exactly that many, ties broken by
/// position — installs the masks and zeroes the rest.
void apply_masks(std::vector<Masked>& mats, const std::vector<at::Tensor>& scores, const SparseAdapterConfig& cfg) {
  auto keep_of = [&](const at::Tensor& s) {
    const at::Tensor flat = s.flatten().to(torch::kDouble);
    const int64_t n = flat.numel();
    const int64_t k = static_cast<int64_t>(std::llround(cfg.pruned_fraction * static_cast<double>(n)));
    at::Tensor keep = torch::ones({n}, torch::kBool);
    if (k <= 0 || k >= n) return keep.fill_(k <= 0);
    auto [sorted, order] = flat.sort(/*stable=*/true, 0, false);
    // Ties across the cut are broken by position, which the criterion does not rank.
    const double at_cut = sorted[k - 1].item<double>();
    if (at_cut == sorted[k].item<double>()) {
      const int64_t tied = (flat == at_cut).sum().item<int64_t>();
      PEFT_CHECK(tied < n, kC, "every '{}' score is {}: the criterion ranks nothing here (is a projection zero?)",
                 cfg.score, at_cut);
      log::warn("sparse_adapter: {} '{}' scores tie at the cut ({}); those pruned among them are chosen by position",
                tied, cfg.score, at_cut);
    }
    keep.index_fill_(0, order.slice(0, 0, k), false);
    return keep;
  };
  std::vector<at::Tensor> keeps;
  if (cfg.scope == "global") {
    std::vector<at::Tensor> flat;
    for (const auto& sc : scores) flat.push_back(sc.flatten());
    at::Tensor all = keep_of(torch::cat(flat));
    int64_t offset = 0;
    for (const auto& sc : scores) {
      keeps.push_back(all.slice(0, offset, offset + sc.numel()).view(sc.sizes()));
      offset += sc.numel();
    }
  } else {
    for (const auto& sc : scores) keeps.push_back(keep_of(sc).view(sc.sizes()));
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < mats.size(); ++i) {
    auto& lin = mats[i].linear;
    at::Tensor keep = keeps[i].to(lin->weight.device());
    lin->weight.mul_(keep.to(lin->weight.scalar_type()));
    auto bits = pack_bits(keep.cpu()).to(lin->weight.device());
    auto buffers = lin->named_buffers(false);
    if (auto* existing = buffers.find("mask_bits")) existing->copy_(bits);
    else lin->register_buffer("mask_bits", bits);
  }
}

void install_gradient_masks(std::vector<Masked>& mats) {
  for (auto& m : mats) {
    auto* lin = m.linear.get();
    m.linear->weight.register_hook([lin](const at::Tensor& grad) {
      at::Tensor bits = lin->named_buffers(false)["mask_bits"];
      return grad * unpack_bits(bits, grad.sizes()).to(grad.scalar_type());
    });
  }
}

std::vector<at::Tensor> weight_scores(const std::vector<Masked>& mats, const std::string& score, uint64_t seed) {
  std::vector<at::Tensor> out;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (const auto& m : mats) {
    const at::Tensor& w = m.linear->weight;
    if (score == "rand") out.push_back(torch::randn(w.sizes(), gen, torch::TensorOptions()));
    else out.push_back(w.detach().abs().cpu());
  }
  return out;
}

void attach_sparse(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<SparseAdapterConfig&>(base_cfg);
  cfg.validate();
  auto inner = BottleneckAdapterConfig::from_json(cfg.adapter);
  inner->common = cfg.common;
  find_method("adapter").attach(model, *inner, adapter);
  auto mats = matrices(model, adapter);
  PEFT_CHECK(!mats.empty(), kC, "the adapter has no matrices to prune");
  // snip and grasp need data: the adapter stays dense (all-ones masks) until
  // prune_sparse_adapter() scores it on a batch.
  const bool needs_data = cfg.score == "snip" || cfg.score == "grasp";
  SparseAdapterConfig dense = cfg;
  if (needs_data) dense.pruned_fraction = 0.0;
  apply_masks(mats, weight_scores(mats, needs_data ? "mag" : cfg.score, cfg.seed), dense);
  install_gradient_masks(mats);
}

}  // namespace

void prune_sparse_adapter(PeftModel& model, const std::string& adapter, const models::ModelInputs& batch) {
  const auto& cfg = dynamic_cast<const SparseAdapterConfig&>(model.adapter_config(adapter));
  auto mats = matrices(model, adapter);
  PEFT_CHECK(!mats.empty(), kC, "adapter '{}' has no sparse matrices", adapter);
  std::vector<at::Tensor> scores;
  if (cfg.score == "grasp") {
    // θ ⊙ H g, with H g = ∂(gᵀ stopgrad(g))/∂θ (the synflow-repo formulation SparseAdapter uses);
    // the lowest scores are pruned.
    std::vector<at::Tensor> weights;
    for (auto& m : mats) weights.push_back(m.linear->weight);
    auto loss = model.forward(batch).loss;
    PEFT_CHECK(loss.defined(), kC, "grasp needs a batch with labels");
    auto g = torch::autograd::grad({loss}, weights, {}, /*retain_graph=*/true, /*create_graph=*/true, true);
    at::Tensor z = torch::zeros({}, loss.options());
    for (auto& gi : g)
      if (gi.defined()) z = z + (gi * gi.detach()).sum();
    auto hg = torch::autograd::grad({z}, weights, {}, false, false, true);
    for (size_t i = 0; i < mats.size(); ++i)
      scores.push_back((weights[i].detach() * (hg[i].defined() ? hg[i] : torch::zeros_like(weights[i]))).cpu());
  } else if (cfg.score == "snip") {
    // |θ ⊙ ∂L/∂θ|, scored on the dense adapter.
    std::vector<at::Tensor> weights;
    for (auto& m : mats) weights.push_back(m.linear->weight);
    auto loss = model.forward(batch).loss;
    PEFT_CHECK(loss.defined(), kC, "snip needs a batch with labels");
    auto grads = torch::autograd::grad({loss}, weights, {}, false, false, /*allow_unused=*/true);
    for (size_t i = 0; i < mats.size(); ++i)
      scores.push_back((weights[i].detach() * (grads[i].defined() ? grads[i] : torch::zeros_like(weights[i]))).abs().cpu());
  } else {
    scores = weight_scores(mats, cfg.score, cfg.seed);
  }
  apply_masks(mats, scores, cfg);
}

double sparse_adapter_density(PeftModel& model, const std::string& adapter) {
  int64_t pruned = 0, total = 0;
  for (auto& m : matrices(model, adapter)) {
    at::Tensor keep = unpack_bits(m.linear->named_buffers(false)["mask_bits"], m.linear->weight.sizes());
    pruned += (~keep).sum().item<int64_t>();
    total += keep.numel();
  }
  return total ? static_cast<double>(pruned) / static_cast<double>(total) : 0.0;
}

// ---- config ------------------------------------------------------------------

void SparseAdapterConfig::validate() const {
  PEFT_CHECK(pruned_fraction >= 0.0 && pruned_fraction < 1.0, kC,
             "pruned_fraction is the share of adapter weights removed and must be in [0, 1), found {}", pruned_fraction);
  PEFT_CHECK(score == "rand" || score == "mag" || score == "snip" || score == "grasp", kC,
             "score must be rand, mag, snip or grasp, found '{}'", score);
  PEFT_CHECK(scope == "global" || scope == "local", kC, "scope must be global or local, found '{}'", scope);
  PEFT_CHECK(adapter.is_object(), kC, "'adapter' must be a bottleneck adapter config object, found {}", adapter.dump());
  const auto inner = BottleneckAdapterConfig::from_json(adapter);  // validates the inner config
  // Scores at a zero-initialised up projection say nothing: |W_up| = 0, and SNIP / GraSP see no
  // gradient through W_down either, so the cut would fall by position.
  PEFT_CHECK(score == "rand" || inner->init_weights != "zero_up", kC,
             "score '{}' needs both projections non-zero at initialisation, but adapter.init_weights is 'zero_up'; "
             "use 'houlsby' (the default) or score 'rand'",
             score);
}

namespace {
const std::vector<ConfigField<SparseAdapterConfig>>& sparse_adapter_fields() {
  using C = SparseAdapterConfig;
  static const std::vector<ConfigField<C>> f = {
      // the bottleneck adapter's own fields, written in full
      {"adapter",
       [](C& c, const nlohmann::json& j, const std::string&, const std::string&) {
         if (!j.contains("adapter") || j["adapter"].is_null()) return;
         // Given keys over the defaults: {"bottleneck_size": 32} keeps the houlsby init.
         if (j["adapter"].is_object()) c.adapter.update(j["adapter"]);
         else c.adapter = j["adapter"];  // validate() names it
       },
       [](const C& c, nlohmann::json& j) {
         auto inner = BottleneckAdapterConfig::from_json(c.adapter)->to_json();
         for (const auto& k : common_keys()) inner.erase(k);
         j["adapter"] = inner;
       }},
      field("pruned_fraction", &C::pruned_fraction),
      field("score", &C::score),
      field("scope", &C::scope),
      field("seed", &C::seed)};
  return f;
}
}  // namespace

std::shared_ptr<SparseAdapterConfig> SparseAdapterConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, sparse_adapter_fields(), kC, "SparseAdapter config");
  c->validate();
  return c;
}

nlohmann::json SparseAdapterConfig::to_json() const { return write_config(*this, sparse_adapter_fields()); }

Method sparse_adapter_method() {
  Method m;
  m.name = "sparse_adapter";
  m.peft_type = "SPARSE_ADAPTER";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return SparseAdapterConfig::from_json(j); };
  m.attach = attach_sparse;
  m.data_needs = [](const MethodConfig& c) {
    const auto& score = dynamic_cast<const SparseAdapterConfig&>(c).score;
    DataNeeds needs;
    needs.init = score == "snip" || score == "grasp";
    needs.reason = fmt::format("score '{}' (it scores the adapter's weights on a training batch)", score);
    return needs;
  };
  // One training batch, as the method's authors score.
  m.prepare = [](PeftModel& model, const std::string& adapter, const data::BatchSource& batches) {
    auto first = batches.first(1);
    PEFT_CHECK(!first.empty(), kC, "adapter '{}': scoring needs a training batch, the batch source has none", adapter);
    prune_sparse_adapter(model, adapter, first.front());
  };
  return m;
}

}  // namespace peft::methods
