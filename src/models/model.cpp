#include "peft/models/model.h"

#include "peft/core/error.h"
#include "peft/nn/checkpoint.h"

namespace peft::models {

std::vector<std::pair<std::string, nn::AdaptableLinear>> PretrainedModel::adaptable_linears() {
  std::vector<std::pair<std::string, nn::AdaptableLinear>> out;
  for (const auto& item : named_modules("", /*include_self=*/false)) {
    if (auto lin = std::dynamic_pointer_cast<nn::AdaptableLinearImpl>(item.value()))
      out.emplace_back(item.key(), nn::AdaptableLinear(lin));
  }
  return out;
}

namespace {
/// Every extension point of type Impl, named by the module that holds it.
template <class Holder, class Impl>
std::vector<std::pair<std::string, Holder>> holders(torch::nn::Module& model) {
  std::vector<std::pair<std::string, Holder>> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    if (auto h = std::dynamic_pointer_cast<Impl>(item.value())) {
      const auto& key = item.key();
      out.emplace_back(key.substr(0, key.rfind('.')), Holder(h));
    }
  return out;
}
}  // namespace

std::vector<std::pair<std::string, nn::BlockAdapters>> PretrainedModel::block_adapters() {
  return holders<nn::BlockAdapters, nn::BlockAdaptersImpl>(*this);
}

std::vector<std::pair<std::string, nn::AttentionAdapters>> PretrainedModel::attention_adapters() {
  return holders<nn::AttentionAdapters, nn::AttentionAdaptersImpl>(*this);
}

void PretrainedModel::set_gradient_checkpointing(bool on) {
  int stacks = 0;
  for (const auto& m : modules(/*include_self=*/true))
    if (auto stack = std::dynamic_pointer_cast<nn::BlockStack>(m)) {
      stack->checkpoint_blocks = on;
      ++stacks;
    }
  PEFT_CHECK(stacks > 0 || !on, "models", "{} ({}) has no block stack that supports gradient checkpointing",
             architecture(), model_type());
  gradient_checkpointing_ = on;
}

}  // namespace peft::models
