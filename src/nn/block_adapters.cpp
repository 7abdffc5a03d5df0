#include "peft/nn/block_adapters.h"

#include <algorithm>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {

const std::vector<std::string>& BlockAdaptersImpl::slots() {
  static const std::vector<std::string> s = {"attention", "ffn"};
  return s;
}

void BlockAdaptersImpl::add(const std::string& adapter, const std::string& slot, std::shared_ptr<SublayerAdapter> module) {
  PEFT_CHECK(std::find(slots().begin(), slots().end(), slot) != slots().end(), "nn",
             "unknown block slot '{}' (slots: attention, ffn)", slot);
  add_entry(adapter, slot, std::move(module));
}

at::Tensor BlockAdaptersImpl::apply(const std::string& slot, const at::Tensor& input, const at::Tensor& output) {
  if (entries_.empty() || active_.empty()) return output;
  at::Tensor out = output;
  for (auto& e : entries_)
    if (e.slot == slot && running(e)) out = static_cast<SublayerAdapter&>(*e.module).forward(input, out);
  return out;
}

}  // namespace peft::nn
