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

std::vector<std::pair<std::string, nn::BlockAdapters>> PretrainedModel::block_adapters() {
  std::vector<std::pair<std::string, nn::BlockAdapters>> out;
  for (const auto& item : named_modules("", /*include_self=*/false)) {
    if (auto b = std::dynamic_pointer_cast<nn::BlockAdaptersImpl>(item.value())) {
      const auto& key = item.key();
      out.emplace_back(key.substr(0, key.rfind('.')), nn::BlockAdapters(b));
    }
  }
  return out;
}

}  // namespace peft::models
