#include "peft/nn/attention_adapters.h"

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {

bool AttentionAdaptersImpl::any_active() const {
  if (!groups_.empty()) {
    for (const auto& g : groups_)
      if (!g.adapter.empty() && has(g.adapter)) return true;
    return false;
  }
  for (const auto& e : entries_)
    if (running(e)) return true;
  return false;
}

at::Tensor AttentionAdaptersImpl::apply(const at::Tensor& context, const AttentionView& view) {
  at::Tensor out = context;
  if (!groups_.empty()) {
    int64_t batch = 0;
    for (const auto& g : groups_) batch += g.rows.numel();
    for (const auto& g : groups_) {
      if (g.adapter.empty() || !has(g.adapter)) continue;
      AttentionView rows = view;
      rows.queries = view.queries.index_select(0, g.rows);
      // The layer's projections are routed by rows too: project the adapter's tokens as every
      // row's input, so the group's rows see them through the group's own deltas.
      rows.key_value = [&](const at::Tensor& tokens) {
        const int64_t n = g.rows.numel();
        PEFT_CHECK(tokens.size(0) == 1 || tokens.size(0) == n, "nn",
                   "an attention adapter projected {} token rows for a group of {} rows", tokens.size(0), n);
        at::Tensor all = torch::zeros({batch, tokens.size(1), tokens.size(2)}, tokens.options());
        all = all.index_copy(0, g.rows, tokens.expand({n, tokens.size(1), tokens.size(2)}));
        auto [k, v] = view.key_value(all);
        return std::make_pair(k.index_select(0, g.rows), v.index_select(0, g.rows));
      };
      for (auto& e : entries_) {
        if (e.adapter != g.adapter) continue;
        const at::Tensor added = static_cast<AttentionAdapter&>(*e.module).forward(rows);
        out = out.index_add(0, g.rows, added);
      }
    }
    return out;
  }
  for (auto& e : entries_)
    if (running(e)) out = out + static_cast<AttentionAdapter&>(*e.module).forward(view);
  return out;
}

}  // namespace peft::nn
