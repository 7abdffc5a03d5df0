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
  for (const auto& e : entries_)
    PEFT_CHECK(!(e.adapter == adapter && e.slot == slot), "nn", "adapter '{}' already has a {} adapter here", adapter, slot);
  auto& container = containers_[adapter];
  if (!container) container = register_module(adapter, std::make_shared<torch::nn::Module>("AdapterSlots"));
  container->register_module(slot, module);
  entries_.push_back({adapter, slot, std::move(module)});
}

void BlockAdaptersImpl::remove(const std::string& adapter) {
  if (!containers_.count(adapter)) return;
  unregister_module(adapter);
  containers_.erase(adapter);
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.adapter == adapter; }),
                 entries_.end());
  active_.erase(std::remove(active_.begin(), active_.end(), adapter), active_.end());
}

bool BlockAdaptersImpl::has(const std::string& adapter) const { return containers_.count(adapter) != 0; }

at::Tensor BlockAdaptersImpl::apply(const std::string& slot, const at::Tensor& input, const at::Tensor& output) {
  if (entries_.empty() || active_.empty()) return output;
  at::Tensor out = output;
  for (auto& e : entries_)
    if (e.slot == slot && std::find(active_.begin(), active_.end(), e.adapter) != active_.end())
      out = e.module->forward(input, out);
  return out;
}

std::map<std::string, at::Tensor> BlockAdaptersImpl::state(const std::string& adapter) const {
  std::map<std::string, at::Tensor> out;
  for (const auto& e : entries_)
    if (e.adapter == adapter) {
      for (const auto& p : e.module->named_parameters(true)) out[e.slot + "." + p.key()] = p.value();
      for (const auto& b : e.module->named_buffers(true)) out[e.slot + "." + b.key()] = b.value();
    }
  return out;
}

}  // namespace peft::nn
