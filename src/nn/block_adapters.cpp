#include "peft/nn/block_adapters.h"

#include <algorithm>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {

const std::vector<std::string>& BlockAdaptersImpl::slots() {
  static const std::vector<std::string> s = {"attention", "cross_attention", "ffn"};
  return s;
}

void BlockAdaptersImpl::add(const std::string& adapter, const std::string& slot, std::shared_ptr<SublayerAdapter> module) {
  PEFT_CHECK(std::find(slots().begin(), slots().end(), slot) != slots().end(), "nn",
             "unknown block slot '{}' (slots: attention, cross_attention, ffn)", slot);
  PEFT_CHECK(offers(slot), "nn", "this block has no {} sublayer (only decoder blocks of an encoder-decoder do)", slot);
  add_entry(adapter, slot, std::move(module));
}

at::Tensor BlockAdaptersImpl::apply(const std::string& slot, const at::Tensor& input, const at::Tensor& output) {
  if (entries_.empty()) return output;
  if (!groups_.empty()) {
    at::Tensor out;  // a copy of output, made once the first group changes something
    for (const auto& g : groups_) {
      if (g.adapter.empty() || !fills(g.adapter, slot)) continue;
      if (!out.defined()) out = output.clone();
      const at::Tensor in_g = input.index_select(0, g.rows);
      at::Tensor out_g = output.index_select(0, g.rows);
      for (auto& e : entries_)
        if (e.slot == slot && e.adapter == g.adapter) out_g = static_cast<SublayerAdapter&>(*e.module).forward(in_g, out_g);
      out = put_rows(std::move(out), g.rows, out_g);
    }
    return out.defined() ? out : output;
  }
  if (active_.empty()) return output;
  at::Tensor out = output;
  for (auto& e : entries_)
    if (e.slot == slot && running(e)) out = static_cast<SublayerAdapter&>(*e.module).forward(input, out);
  return out;
}

}  // namespace peft::nn
