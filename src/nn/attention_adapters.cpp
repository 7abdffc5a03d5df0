#include "peft/nn/attention_adapters.h"

#include <torch/torch.h>

namespace peft::nn {

bool AttentionAdaptersImpl::any_active() const {
  for (const auto& e : entries_)
    if (running(e)) return true;
  return false;
}

at::Tensor AttentionAdaptersImpl::apply(const at::Tensor& context, const AttentionView& view) {
  at::Tensor out = context;
  for (auto& e : entries_)
    if (running(e)) out = out + static_cast<AttentionAdapter&>(*e.module).forward(view);
  return out;
}

}  // namespace peft::nn
