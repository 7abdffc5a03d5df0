#include "peft/models/model.h"

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

}  // namespace peft::models
