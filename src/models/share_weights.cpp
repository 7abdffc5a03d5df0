#include "peft/models/share_weights.h"

#include <torch/torch.h>

namespace peft::models {

int64_t share_weights(PretrainedModel& target, PretrainedModel& source) {
  const auto heads = target.head_modules();
  auto own = [&](const std::string& name) {
    if (target.newly_initialized().count(name)) return true;
    for (const auto& h : heads)
      if (name == h || name.rfind(h + ".", 0) == 0) return true;
    return false;
  };
  std::map<std::string, at::Tensor> from;
  for (const auto& p : source.named_parameters()) from[p.key()] = p.value();
  for (const auto& b : source.named_buffers()) from[b.key()] = b.value();
  int64_t shared = 0;
  auto share = [&](const std::string& name, at::Tensor t) {
    const auto it = from.find(name);
    if (own(name) || it == from.end()) return;
    const at::Tensor& s = it->second;
    if (s.sizes() != t.sizes() || s.scalar_type() != t.scalar_type() || s.device() != t.device()) return;
    if (t.is_alias_of(s)) return;  // shared already
    t.set_data(s);  // the same storage from now on: the target's copy is freed
    ++shared;
  };
  torch::NoGradGuard no_grad;
  for (const auto& p : target.named_parameters()) share(p.key(), p.value());
  for (const auto& b : target.named_buffers()) share(b.key(), b.value());
  return shared;
}

}  // namespace peft::models
