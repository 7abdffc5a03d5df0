#include "lst_prune_init.h"

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/strings.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "lst";

enum class Axis { kResidual, kInner, kQuery, kKey, kValue, kOutput, kQkv, kKeep };

bool has(const std::string& name, const char* part) { return name.find(part) != std::string::npos; }

/// T5's names: q/k/v/o under SelfAttention or EncDecAttention, wi (wi_0, wi_1) and wo under
/// DenseReluDense; the relative position bias [buckets, heads] is kept whole (heads stay).
std::vector<Axis> t5_axes_of(const std::string& name, const at::Tensor& t) {
  if (has(name, "relative_attention_bias.")) return {Axis::kKeep, Axis::kKeep};
  if (t.dim() == 1) return {Axis::kResidual};  // layer norms
  if (has(name, "Attention.q.")) return {Axis::kQuery, Axis::kResidual};
  if (has(name, "Attention.k.")) return {Axis::kKey, Axis::kResidual};
  if (has(name, "Attention.v.")) return {Axis::kValue, Axis::kResidual};
  if (has(name, "Attention.o.")) return {Axis::kResidual, Axis::kOutput};
  if (has(name, "DenseReluDense.wi")) return {Axis::kInner, Axis::kResidual};
  if (has(name, "DenseReluDense.wo.")) return {Axis::kResidual, Axis::kInner};
  fail(kC, fmt::format("cannot prune '{}' for the side network: unknown module", name));
}

/// What each dimension of a backbone block parameter indexes, by the module it belongs to.
std::vector<Axis> axes_of(const std::string& name, const at::Tensor& t, const std::string& model_type) {
  if (model_type == "t5") return t5_axes_of(name, t);
  const bool conv1d = model_type == "gpt2";
  const bool is_weight = core::ends_with(name, ".weight") && t.dim() == 2;
  Axis out = Axis::kResidual, in = Axis::kResidual;
  if (has(name, "c_attn.")) out = Axis::kQkv;
  else if (has(name, "query.") || has(name, "q_proj.")) out = Axis::kQuery;
  else if (has(name, "key.") || has(name, "k_proj.")) out = Axis::kKey;
  else if (has(name, "value.") || has(name, "v_proj.")) out = Axis::kValue;
  else if (has(name, "attn.c_proj.") || has(name, "attention.output.dense.") || has(name, "o_proj.")) in = Axis::kOutput;
  else if (has(name, "c_fc.") || has(name, "intermediate.dense.") || has(name, "gate_proj.") || has(name, "up_proj.")) out = Axis::kInner;
  else if (has(name, "mlp.c_proj.") || has(name, "output.dense.") || has(name, "down_proj.")) in = Axis::kInner;
  else PEFT_CHECK(t.dim() == 1, kC, "cannot prune '{}' for the side network: unknown module", name);
  if (!is_weight) return {out};
  return conv1d ? std::vector<Axis>{in, out} : std::vector<Axis>{out, in};
}

/// Indices of the top-k scores, ascending.
at::Tensor top_sorted(const at::Tensor& scores, int64_t k) {
  return std::get<0>(std::get<1>(scores.topk(k, 0, true, true)).sort()).to(torch::kLong);
}

struct Selection {
  at::Tensor residual;
  std::map<std::string, at::Tensor> inner, qk, vo;  // by group (see Source); qk/vo per kv head: [kv_heads, side head_dim]
};

/// Per kv head, the side head_dim most important dimensions of `scores` [kv_heads * head_dim];
/// with rotary embeddings dimensions i and i + head_dim/2 rotate together and are kept as pairs.
at::Tensor per_head(const at::Tensor& scores, int64_t kv_heads, int64_t hd, int64_t hd_side, bool rotary) {
  at::Tensor s = scores.view({kv_heads, hd});
  std::vector<at::Tensor> rows;
  for (int64_t g = 0; g < kv_heads; ++g) {
    if (!rotary) {
      rows.push_back(top_sorted(s[g], hd_side));
      continue;
    }
    at::Tensor pairs = s[g].slice(0, 0, hd / 2) + s[g].slice(0, hd / 2, hd);
    at::Tensor sel = top_sorted(pairs, hd_side / 2);
    rows.push_back(torch::cat({sel, sel + hd / 2}));
  }
  return torch::stack(rows);
}

/// Indices of a [heads * head_dim] axis given per-kv-head choices (query heads share their group's).
at::Tensor head_layout(const at::Tensor& chosen, int64_t heads, int64_t hd) {
  const int64_t kv = chosen.size(0), group = heads / kv;
  std::vector<at::Tensor> parts;
  for (int64_t h = 0; h < heads; ++h) parts.push_back(chosen[h / group] + h * hd);
  return torch::cat(parts);
}

/// Folds a query-layout score vector [heads * head_dim] onto its kv heads.
at::Tensor fold_heads(const at::Tensor& s, int64_t heads, int64_t kv, int64_t hd) {
  return s.view({kv, heads / kv, hd}).sum(1).flatten();
}

}  // namespace

void init_side_from_backbone(const std::vector<std::pair<std::string, at::Tensor>>& side_params,
                             const std::map<std::string, at::Tensor>& backbone_params,
                             const std::map<std::string, at::Tensor>& importance, const SidePruning& spec) {
  torch::NoGradGuard no_grad;
  const auto& g = spec.backbone;
  const auto& gs = spec.side;
  const bool rotary = spec.model_type == "llama";
  const int64_t H = g.num_heads, K = g.num_kv_heads, hd = g.head_dim;
  const std::string pat = spec.layers_pattern + ".";

  // Side name -> backbone name and its group: the backbone name up to the layer index (a
  // decoder's cross-attention a group of its own), empty outside the blocks.
  struct Source {
    std::string name, group;
  };
  auto source_of = [&](const std::string& side_name) {
    Source src;
    std::string name = side_name;
    const size_t at = name.find(pat);
    if (at != std::string::npos && (at == 0 || name[at - 1] == '.')) {
      const size_t start = at + pat.size(), end = name.find('.', start);
      const int64_t j = std::stoll(name.substr(start, end - start));
      const bool decoder = name.rfind("decoder.", 0) == 0 && !spec.decoder_layers.empty();
      const auto& layers = decoder ? spec.decoder_layers : spec.layers;
      PEFT_CHECK(j >= 0 && j < static_cast<int64_t>(layers.size()), kC, "side parameter '{}' has no backbone layer",
                 side_name);
      // Only a stack's first layer holds T5's relative position bias: every side stack copies it.
      const int64_t layer = has(name, "relative_attention_bias.") ? 0 : layers[j];
      name = name.substr(0, start) + std::to_string(layer) + name.substr(end);
      src.group = spec.backbone_prefix + name.substr(0, start) + std::to_string(layer) +
                  (has(name, "EncDecAttention.") ? ":cross" : "");
    }
    src.name = spec.backbone_prefix + name;
    PEFT_CHECK(backbone_params.count(src.name) && importance.count(src.name), kC,
               "side parameter '{}' has no backbone counterpart '{}'", side_name, src.name);
    return src;
  };

  // Each side parameter's backbone counterpart and what its dimensions index, worked out once.
  struct Mapped {
    Source src;
    std::vector<Axis> axes;
  };
  std::vector<Mapped> mapped;
  for (const auto& [side_name, side_t] : side_params) {
    Source src = source_of(side_name);
    auto axes = axes_of(src.name, backbone_params.at(src.name), spec.model_type);
    mapped.push_back({std::move(src), std::move(axes)});
  }

  // Accumulate every axis' importance.
  auto zeros = [](int64_t n) { return torch::zeros({n}, torch::kDouble); };
  at::Tensor residual = zeros(g.hidden_size);
  std::map<std::string, at::Tensor> inner, qk, vo;
  for (const auto& [src, axes] : mapped) {
    const at::Tensor imp = importance.at(src.name).detach().abs().to(torch::kCPU, torch::kDouble);
    for (size_t d = 0; d < axes.size(); ++d) {
      at::Tensor s = imp.dim() == 1 ? imp : imp.sum(1 - static_cast<int64_t>(d));
      const std::string& l = src.group;
      auto acc = [&](std::map<std::string, at::Tensor>& m, int64_t n) -> at::Tensor& {
        if (!m.count(l)) m[l] = zeros(n);
        return m[l];
      };
      switch (axes[d]) {
        case Axis::kKeep: break;
        case Axis::kResidual: residual += s; break;
        case Axis::kInner: acc(inner, g.intermediate_size) += s; break;
        case Axis::kQuery: acc(qk, K * hd) += fold_heads(s, H, K, hd); break;
        case Axis::kKey: acc(qk, K * hd) += s; break;
        case Axis::kValue: acc(vo, K * hd) += s; break;
        case Axis::kOutput: acc(vo, K * hd) += fold_heads(s, H, K, hd); break;
        case Axis::kQkv: {
          auto parts = s.split(H * hd);
          acc(qk, K * hd) += parts[0] + parts[1];
          acc(vo, K * hd) += parts[2];
          break;
        }
      }
    }
  }

  Selection sel;
  sel.residual = top_sorted(residual, gs.hidden_size);
  for (auto& [l, s] : inner) sel.inner[l] = top_sorted(s, gs.intermediate_size);
  for (auto& [l, s] : qk) sel.qk[l] = per_head(s, K, hd, gs.head_dim, rotary);
  for (auto& [l, s] : vo) sel.vo[l] = per_head(s, K, hd, gs.head_dim, false);

  for (size_t i = 0; i < side_params.size(); ++i) {
    const auto& [side_name, side_t] = side_params[i];
    const auto& [src, axes] = mapped[i];
    at::Tensor t = backbone_params.at(src.name).detach();
    const std::string& l = src.group;
    for (size_t d = 0; d < axes.size(); ++d) {
      at::Tensor idx;
      switch (axes[d]) {
        case Axis::kKeep: continue;
        case Axis::kResidual: idx = sel.residual; break;
        case Axis::kInner: idx = sel.inner.at(l); break;
        case Axis::kQuery: idx = head_layout(sel.qk.at(l), H, hd); break;
        case Axis::kKey: idx = head_layout(sel.qk.at(l), K, hd); break;
        case Axis::kValue: idx = head_layout(sel.vo.at(l), K, hd); break;
        case Axis::kOutput: idx = head_layout(sel.vo.at(l), H, hd); break;
        case Axis::kQkv:
          idx = torch::cat({head_layout(sel.qk.at(l), H, hd), head_layout(sel.qk.at(l), H, hd) + H * hd,
                            head_layout(sel.vo.at(l), H, hd) + 2 * H * hd});
          break;
      }
      t = t.index_select(static_cast<int64_t>(d), idx.to(t.device()));
    }
    PEFT_CHECK(t.sizes() == side_t.sizes(), kC, "pruned '{}' has shape {}, the side parameter '{}' {}", src.name,
               c10::str(t.sizes()), side_name, c10::str(side_t.sizes()));
    side_t.copy_(t);
  }
}

}  // namespace peft::methods
