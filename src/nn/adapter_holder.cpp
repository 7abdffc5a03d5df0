#include "peft/nn/adapter_holder.h"

#include <algorithm>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {

void AdapterHolder::add_entry(const std::string& adapter, const std::string& slot,
                              std::shared_ptr<torch::nn::Module> module) {
  for (const auto& e : entries_)
    PEFT_CHECK(!(e.adapter == adapter && e.slot == slot), "nn", "adapter '{}' already has {} here", adapter,
               slot.empty() ? "a module" : "a " + slot + " adapter");
  auto& container = containers_[adapter];
  if (slot.empty()) {
    container = register_module(adapter, module);
  } else {
    if (!container) container = register_module(adapter, std::make_shared<torch::nn::Module>("AdapterSlots"));
    container->register_module(slot, module);
  }
  entries_.push_back({adapter, slot, std::move(module)});
}

void AdapterHolder::remove(const std::string& adapter) {
  if (!containers_.count(adapter)) return;
  unregister_module(adapter);
  containers_.erase(adapter);
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.adapter == adapter; }),
                 entries_.end());
  active_.erase(std::remove(active_.begin(), active_.end(), adapter), active_.end());
}

bool AdapterHolder::running(const Entry& e) const {
  return std::find(active_.begin(), active_.end(), e.adapter) != active_.end();
}

bool AdapterHolder::fills(const std::string& adapter, const std::string& slot) const {
  for (const auto& e : entries_)
    if (e.adapter == adapter && e.slot == slot) return true;
  return false;
}

std::map<std::string, at::Tensor> AdapterHolder::state(const std::string& adapter) const {
  std::map<std::string, at::Tensor> out;
  for (const auto& e : entries_) {
    if (e.adapter != adapter) continue;
    const std::string prefix = e.slot.empty() ? "" : e.slot + ".";
    for (const auto& p : e.module->named_parameters(true)) out[prefix + p.key()] = p.value();
    for (const auto& b : e.module->named_buffers(true)) out[prefix + b.key()] = b.value();
  }
  return out;
}

std::vector<std::shared_ptr<torch::nn::Module>> AdapterHolder::modules_of(const std::string& adapter) const {
  std::vector<std::shared_ptr<torch::nn::Module>> out;
  for (const auto& e : entries_)
    if (e.adapter == adapter) out.push_back(e.module);
  return out;
}

}  // namespace peft::nn
