#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/methods/adamix.h"
#include "peft/models/save.h"
#include "peft/peft_model.h"
#include "peft/train/trainer.h"

namespace peft::train {
namespace {
std::vector<std::pair<std::string, at::Tensor>> requiring_grad(torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& item : m.named_parameters())
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  return out;
}
}  // namespace

Trainable trainable_delta(PeftModel& model) {
  Trainable t;
  t.forward = [&model](const models::ModelInputs& in) {
    auto out = model.forward(in);
    // AdaMix's consistency regularization: a second, independently routed pass while training.
    const auto* mix = model.active_adapter().empty()
                          ? nullptr
                          : dynamic_cast<const methods::AdaMixConfig*>(&model.adapter_config(model.active_adapter()));
    if (mix && mix->consistency_weight > 0 && model.base_model().is_training() && out.loss.defined()) {
      auto again = model.forward(in);
      out.loss = out.loss + mix->consistency_weight * methods::symmetric_kl(out.logits, again.logits);
    }
    return out;
  };
  t.parameters = [&model] { return requiring_grad(model.base_model()); };
  t.save = [&model](const std::string& dir) {
    const std::string active = model.active_adapter();
    const auto* mix = dynamic_cast<const methods::AdaMixConfig*>(&model.adapter_config(active));
    if (!mix || mix->num_experts == 1) return checkpoint::save_adapter(model, dir, active);
    // AdaMix ships the expert average: one adapter's size and cost.
    const std::string deployed = active + "-deployed";
    methods::adamix_deploy(model, active, deployed);
    try {
      checkpoint::save_adapter(model, dir, deployed);
    } catch (...) {
      model.delete_adapter(deployed);
      throw;
    }
    model.delete_adapter(deployed);
  };
  t.set_training = [&model](bool on) { model.train(on); };
  return t;
}

Trainable trainable_model(std::shared_ptr<models::PretrainedModel> model) {
  for (auto& p : model->parameters()) p.set_requires_grad(true);
  Trainable t;
  t.forward = [model](const models::ModelInputs& in) { return model->forward(in); };
  t.parameters = [model] { return requiring_grad(*model); };
  t.save = [model](const std::string& dir) { models::save_pretrained(*model, dir); };
  t.set_training = [model](bool on) { model->train(on); };
  return t;
}

}  // namespace peft::train
