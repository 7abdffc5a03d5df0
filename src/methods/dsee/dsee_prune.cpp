#include "peft/methods/dsee/dsee_prune.h"

#include <cmath>
#include <map>

#include <torch/torch.h>

#include "methods/method_helpers.h"
#include "peft/core/error.h"
#include "peft/methods/dsee/dsee.h"
#include "peft/peft_model.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "dsee";

/// Where each family keeps a block's attention projections (relative to the block).
struct HeadLayout {
  std::string q, k, v, o;  ///< k and v empty: fused into q as [q; k; v] rows (GPT-2's c_attn)
};

HeadLayout head_layout(const std::string& model_type) {
  if (model_type == "gpt2") return {"attn.c_attn", "", "", "attn.c_proj"};
  if (model_type == "llama") return {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"};
  if (model_type == "vit")
    return {"attention.attention.query", "attention.attention.key", "attention.attention.value",
            "attention.output.dense"};
  if (model_type == "bert" || model_type == "roberta")
    return {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"};
  fail(kC, fmt::format("head pruning does not know the attention layout of model_type '{}'", model_type));
}

struct Layer {
  nn::AdaptableLinear lin{nullptr};
  std::shared_ptr<DseeDelta> delta;  // null when the adapter does not touch the layer
  at::Tensor keep;                   // bool [out, in]
  at::Tensor update() const {        // the adapter's ΔW (zeros without one)
    return delta ? delta->delta_weight().detach() : torch::zeros_like(lin->weight_out_in());
  }
};

}  // namespace

nlohmann::json DseePruneReport::to_json() const {
  return {{"weights", weights},       {"zeroed", zeroed},         {"sparsity", weights ? double(zeroed) / weights : 0.0},
          {"heads", heads},           {"heads_pruned", heads_pruned}, {"macs_dense", macs_dense},
          {"macs_kept", macs_kept}};
}

DseePruneReport dsee_prune(PeftModel& model, const std::string& adapter, const DseePruneOptions& o) {
  PEFT_CHECK(o.pruning_ratio >= 0.0 && o.pruning_ratio < 1.0, kC, "pruning_ratio must be in [0, 1), found {}",
             o.pruning_ratio);
  PEFT_CHECK(o.heads_to_prune >= 0, kC, "heads_to_prune must be non-negative, found {}", o.heads_to_prune);
  PEFT_CHECK(model.adapter_config(adapter).method() == "dsee", kC, "adapter '{}' is {}, not DSEE", adapter,
             model.adapter_config(adapter).method());
  PEFT_CHECK(!model.merged(), kC, "unmerge the adapter before pruning");
  torch::NoGradGuard no_grad;
  // Every projection inside a block, in model order.
  std::map<std::string, Layer> layers;
  std::vector<std::string> order;
  for (const auto& [name, lin] : model.linears())
    if (inside_block(model, name)) {
      layers[name] = {lin, std::dynamic_pointer_cast<DseeDelta>(lin->delta(adapter)), at::Tensor()};
      order.push_back(name);
    }
  PEFT_CHECK(!order.empty(), kC, "the model has no block projections to prune");

  // Unstructured: the globally smallest |W₀ + ΔW| (ties by position, so the count is exact).
  std::vector<at::Tensor> scores;
  for (const auto& name : order) {
    auto& l = layers[name];
    scores.push_back((l.lin->weight_out_in() + l.update()).abs().to(torch::kFloat).cpu().reshape(-1));
  }
  at::Tensor all = torch::cat(scores);
  const int64_t k = std::llround(o.pruning_ratio * static_cast<double>(all.numel()));
  at::Tensor keep_all = torch::ones({all.numel()}, torch::kBool);
  if (k > 0) keep_all.index_put_({std::get<1>(torch::sort(all, /*stable=*/true, 0, false)).narrow(0, 0, k)}, false);
  int64_t offset = 0;
  for (const auto& name : order) {
    auto& l = layers[name];
    const auto w = l.lin->weight_out_in();
    l.keep = keep_all.narrow(0, offset, w.numel()).view(w.sizes()).to(w.device());
    offset += w.numel();
  }

  // Structured: per layer, the heads whose query and value rows the update changed least.
  DseePruneReport report;
  const auto g = model.base_model().geometry();
  const int64_t dh = g.head_dim, rep = g.num_heads / g.num_kv_heads, d_q = g.num_heads * dh, d_kv = g.num_kv_heads * dh;
  if (o.heads_to_prune > 0) {
    PEFT_CHECK(o.heads_to_prune < g.num_heads, kC, "heads_to_prune {} would leave no head (the model has {})",
               o.heads_to_prune, g.num_heads);
    const auto lay = head_layout(model.base_model().model_type());
    for (const auto& [block, holder] : model.blocks()) {
      auto& q = layers.at(block + "." + lay.q);
      auto& out = layers.at(block + "." + lay.o);
      const bool fused = lay.k.empty();
      Layer* kl = fused ? &q : &layers.at(block + "." + lay.k);
      Layer* vl = fused ? &q : &layers.at(block + "." + lay.v);
      const int64_t k_off = fused ? d_q : 0, v_off = fused ? d_q + d_kv : 0;
      at::Tensor dq = q.update().abs(), dv = vl->update().abs();
      std::vector<std::pair<double, int64_t>> importance;
      for (int64_t h = 0; h < g.num_heads; ++h)
        importance.emplace_back(dq.narrow(0, h * dh, dh).sum().item<double>() +
                                    dv.narrow(0, v_off + (h / rep) * dh, dh).sum().item<double>(),
                                h);
      std::stable_sort(importance.begin(), importance.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      for (int64_t i = 0; i < o.heads_to_prune; ++i) {
        const int64_t h = importance[i].second;
        q.keep.narrow(0, h * dh, dh).fill_(false);
        out.keep.narrow(1, h * dh, dh).fill_(false);
        if (q.lin->bias.defined()) q.lin->bias.narrow(0, h * dh, dh).zero_();  // fused: the query part
        if (rep == 1) {  // a key/value head serves this query head alone
          for (auto [l, off] : {std::make_pair(kl, k_off), std::make_pair(vl, v_off)}) {
            l->keep.narrow(0, off + h * dh, dh).fill_(false);
            if (l->lin->bias.defined()) l->lin->bias.narrow(0, off + h * dh, dh).zero_();
          }
        }
      }
      report.heads += g.num_heads;
      report.heads_pruned += o.heads_to_prune;
    }
  }

  // The base keeps its masked weights; the update is masked alike from now on.
  for (const auto& name : order) {
    auto& l = layers[name];
    at::Tensor w = l.lin->weight_out_in();
    w.mul_(l.keep.to(w.scalar_type()));
    if (l.delta) l.delta->set_mask(l.keep);
    report.weights += w.numel();
    report.zeroed += w.numel() - l.keep.sum().item<int64_t>();
    report.macs_dense += w.numel();
    report.macs_kept += l.keep.sum().item<int64_t>();
  }
  return report;
}

}  // namespace peft::methods
