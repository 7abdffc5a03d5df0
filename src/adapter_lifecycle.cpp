// The parts of PeftModel that run a method's lifecycle hooks (methods/method.h): attaching with
// or without data, data-dependent initialisation, and the training-loss terms.
#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/data/batch_source.h"
#include "peft/optim/adamw.h"
#include "peft/peft_model.h"

namespace peft {
namespace {
constexpr const char* kC = "peft_model";
}  // namespace

void PeftModel::add_adapter(const std::string& name, const methods::MethodConfig& config) {
  const auto needs = methods::data_needs(config);
  PEFT_CHECK(!needs.init, kC,
             "adapter '{}': {} with {} needs training batches to initialise; call add_adapter(name, config, batches) "
             "(or add_adapter_without_data when its tensors are loaded next)",
             name, config.peft_type(), needs.reason);
  add_adapter_without_data(name, config);
}

void PeftModel::add_adapter(const std::string& name, const methods::MethodConfig& config,
                            const data::BatchSource& batches) {
  PEFT_CHECK(!has_adapter(name), kC, "adapter '{}' already exists; delete it first or pick another name", name);
  const auto planned = methods::plan_config(*this, config, batches);
  add_adapter_without_data(name, *planned);
  try {
    prepare_adapter(name, batches);
  } catch (...) {
    delete_adapter(name);
    throw;
  }
}

void PeftModel::prepare_adapter(const std::string& name, const data::BatchSource& batches) {
  const auto& config = adapter_config(name);
  if (!methods::data_needs(config).init) return;
  const auto& method = methods::find_method(config.method());
  PEFT_CHECK(method.prepare, kC, "method '{}' needs data to initialise but registers no prepare hook", method.name);
  method.prepare(*this, name, batches);
}

std::string PeftModel::parameter_role(const std::string& name, const at::Tensor& tensor) const {
  for (const auto& [adapter_name, a] : adapters_) {
    const auto& method = methods::find_method(a.config->method());
    if (!method.parameter_role) continue;
    std::string role = method.parameter_role(name);
    if (!role.empty()) return role;
  }
  return optim::default_parameter_role(name, tensor);
}

std::vector<std::pair<std::string, at::Tensor>> PeftModel::adapter_buffers() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& b : base_->named_buffers(true))
    if (!base_buffer_names_.count(b.key())) out.emplace_back(b.key(), b.value());
  return out;
}

void PeftModel::add_weighted_adapter(const std::vector<std::string>& sources, const std::vector<double>& weights,
                                     const std::string& new_name, const methods::WeightedCombination& how) {
  PEFT_CHECK(!sources.empty(), kC, "add_weighted_adapter: no adapters to combine");
  PEFT_CHECK(weights.size() == sources.size(), kC, "add_weighted_adapter: {} weights for {} adapters", weights.size(),
             sources.size());
  PEFT_CHECK(!has_adapter(new_name), kC, "adapter '{}' already exists; delete it first or pick another name", new_name);
  const std::string method = adapter(sources.front()).config->method();
  for (const auto& s : sources)
    PEFT_CHECK(adapter(s).config->method() == method, kC,
               "add_weighted_adapter: '{}' is {} and '{}' is {}; only deltas of one method combine", sources.front(),
               method, s, adapter(s).config->method());
  const auto& m = methods::find_method(method);
  PEFT_CHECK(m.combine != nullptr, kC, "add_weighted_adapter: {} deltas ('{}') cannot be combined (LoRA's can)", method,
             sources.front());
  try {
    m.combine(*this, sources, weights, new_name, how);
  } catch (...) {
    if (has_adapter(new_name)) delete_adapter(new_name);
    throw;
  }
}

models::ModelOutput PeftModel::forward_train(const models::ModelInputs& inputs) {
  auto out = forward(inputs);
  if (!base_->is_training() || !out.loss.defined() || !enabled_) return out;
  for (const auto& name : active_set_) {
    const auto& method = methods::find_method(adapter(name).config->method());
    if (!method.training_loss) continue;
    at::Tensor extra = method.training_loss(*this, name, inputs, out);
    if (extra.defined()) out.loss = out.loss + extra;
  }
  return out;
}

}  // namespace peft
