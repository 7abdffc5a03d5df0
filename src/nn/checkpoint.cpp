#include "peft/nn/checkpoint.h"

#include <torch/torch.h>

#include "core/generator_state.h"
#include "core/torch_compat.h"
#include "peft/core/error.h"

namespace peft::nn {
namespace {

/// What backward needs beyond the saved tensors: the block and the generators' state before it ran.
struct Recompute : torch::CustomClassHolder {
  BlockFunction block;
  std::vector<bool> defined;  // which of the caller's inputs were defined (only those are passed on)
  size_t num_inputs = 0;      // leading entries of the tensor list that are inputs; the rest are params
  std::map<std::string, at::Tensor> rng;
  // Autocast as the forward ran (backward runs outside it): the recompute must cast the same way.
  struct Autocast {
    c10::DeviceType device;
    bool enabled;
    c10::ScalarType dtype;
  };
  std::vector<Autocast> autocast;
};

/// Sets each device type's autocast as recorded; returns what it replaced.
std::vector<Recompute::Autocast> set_autocast(const std::vector<Recompute::Autocast>& states) {
  std::vector<Recompute::Autocast> previous;
  for (const auto& a : states) {
    previous.push_back({a.device, core::autocast_enabled(a.device), core::autocast_dtype(a.device)});
    core::set_autocast(a.device, a.enabled, a.dtype);
  }
  return previous;
}

std::vector<at::Tensor> with_undefined(const std::vector<at::Tensor>& given, const std::vector<bool>& defined) {
  std::vector<at::Tensor> out;
  size_t k = 0;
  for (bool d : defined) out.push_back(d ? given[k++] : at::Tensor());
  return out;
}

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, c10::intrusive_ptr<Recompute> r,
                            at::TensorList tensors) {
    std::vector<at::Tensor> inputs(tensors.begin(), tensors.begin() + static_cast<int64_t>(r->num_inputs));
    ctx->save_for_backward(std::vector<at::Tensor>(tensors.begin(), tensors.end()));
    r->rng = core::generator_states();
    for (const auto device : {c10::kCPU, c10::kCUDA})
      r->autocast.push_back({device, core::autocast_enabled(device), core::autocast_dtype(device)});
    at::Tensor out = r->block(with_undefined(inputs, r->defined));
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(r);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto r = c10::static_intrusive_pointer_cast<Recompute>(ctx->saved_data["recompute"].toCapsule());
    const auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor> inputs, targets;
    std::vector<size_t> target_index;
    for (size_t i = 0; i < saved.size(); ++i) {
      at::Tensor t = saved[i];
      if (i < r->num_inputs) {
        t = t.detach().requires_grad_(saved[i].requires_grad());
        inputs.push_back(t);
      }
      if (t.requires_grad()) {
        targets.push_back(t);
        target_index.push_back(i);
      }
    }
    at::Tensor out;
    {
      // Replay the forward's random draws, then leave the generators as backward found them.
      core::GeneratorStateGuard keep;
      core::set_generator_states(r->rng);
      const auto outside = set_autocast(r->autocast);
      torch::AutoGradMode grad_on(true);
      try {
        out = r->block(with_undefined(inputs, r->defined));
      } catch (...) {
        set_autocast(outside);
        throw;
      }
      set_autocast(outside);
      core::clear_autocast_cache();
    }
    torch::autograd::variable_list grads(saved.size());
    if (out.requires_grad() && !targets.empty()) {
      auto computed = torch::autograd::grad({out}, targets, {grad_out[0]}, /*retain_graph=*/false,
                                            /*create_graph=*/false, /*allow_unused=*/true);
      for (size_t k = 0; k < targets.size(); ++k) grads[target_index[k]] = computed[k];
    }
    grads.insert(grads.begin(), at::Tensor());  // for the Recompute argument
    return grads;
  }
};

}  // namespace

at::Tensor checkpointed(const BlockFunction& block, const std::vector<at::Tensor>& inputs,
                        const std::vector<at::Tensor>& params) {
  auto r = c10::make_intrusive<Recompute>();
  r->block = block;
  std::vector<at::Tensor> tensors;
  for (const auto& t : inputs) {
    r->defined.push_back(t.defined());
    if (t.defined()) tensors.push_back(t);
  }
  r->num_inputs = tensors.size();
  PEFT_CHECK(r->num_inputs > 0, "nn", "checkpointed: a block needs at least one defined input");
  for (const auto& p : params)
    if (p.defined()) tensors.push_back(p);
  return CheckpointFunction::apply(r, at::TensorList(tensors));
}

bool checkpointing_applies(bool enabled, bool training) { return enabled && training && at::GradMode::is_enabled(); }

std::vector<at::Tensor> tensors_requiring_grad(const std::vector<at::Tensor>& parameters) {
  std::vector<at::Tensor> out;
  for (const auto& p : parameters)
    if (p.requires_grad()) out.push_back(p);
  return out;
}

}  // namespace peft::nn
