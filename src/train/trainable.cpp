#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
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
  t.forward = [&model](const models::ModelInputs& in) { return model.forward_train(in); };
  t.parameters = [&model] { return requiring_grad(model.base_model()); };
  t.buffers = [&model] { return model.adapter_buffers(); };
  t.role = [&model](const std::string& name, const at::Tensor& p) { return model.parameter_role(name, p); };
  t.save = [&model](const std::string& dir) { checkpoint::export_adapter(model, dir, model.active_adapter()); };
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
