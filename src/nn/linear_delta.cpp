#include "peft/nn/linear_delta.h"

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {

void LinearDelta::merge_into(at::Tensor&, at::Tensor&) {
  fail("nn", fmt::format("{} cannot be merged into the base weight", name()));
}

void LinearDelta::unmerge_from(at::Tensor&, at::Tensor&) {
  fail("nn", fmt::format("{} cannot be unmerged from the base weight", name()));
}

void AdditiveWeightDelta::merge_into(at::Tensor& weight_out_in, at::Tensor&) {
  weight_out_in.add_(delta_weight().to(weight_out_in.scalar_type()));
}

void AdditiveWeightDelta::unmerge_from(at::Tensor& weight_out_in, at::Tensor&) {
  weight_out_in.sub_(delta_weight().to(weight_out_in.scalar_type()));
}

std::map<std::string, at::Tensor> LinearDelta::delta_state() {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : named_parameters(true)) out[p.key()] = p.value();
  for (const auto& b : named_buffers(true)) out[b.key()] = b.value();
  return out;
}

void LinearDelta::load_delta_state(const std::map<std::string, at::Tensor>& state,
                                   const std::string& where) {
  auto mine = delta_state();
  for (const auto& [name, src] : state)
    PEFT_CHECK(mine.count(name), "checkpoint", "{}: unexpected tensor '{}'", where, name);
  torch::NoGradGuard no_grad;
  for (auto& [name, dst] : mine) {
    auto it = state.find(name);
    PEFT_CHECK(it != state.end(), "checkpoint", "{}: missing tensor '{}'", where, name);
    PEFT_CHECK(it->second.sizes() == dst.sizes(), "checkpoint",
               "{}: tensor '{}' has shape {}, expected {}", where, name,
               c10::str(it->second.sizes()), c10::str(dst.sizes()));
    dst.copy_(it->second);
  }
}

}  // namespace peft::nn
