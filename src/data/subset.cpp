#include "peft/data/subset.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "peft/core/error.h"

namespace peft::data {

SubsetDataset::SubsetDataset(std::shared_ptr<const Dataset> parent, std::vector<int64_t> indices, std::string name)
    : parent_(std::move(parent)), indices_(std::move(indices)), name_(std::move(name)) {
  PEFT_CHECK(parent_, "data", "{}: no dataset to take examples from", name_);
  for (int64_t i : indices_)
    PEFT_CHECK(i >= 0 && i < parent_->size(), "data", "{}: example {} is outside the dataset's {}", name_, i,
               parent_->size());
}

models::ModelInputs SubsetDataset::batch(const std::vector<int64_t>& indices) const {
  std::vector<int64_t> mapped;
  mapped.reserve(indices.size());
  for (int64_t i : indices) {
    PEFT_CHECK(i >= 0 && i < size(), "data", "{}: example {} is outside its {}", name_, i, size());
    mapped.push_back(indices_[static_cast<size_t>(i)]);
  }
  return parent_->batch(mapped);
}

std::string SubsetDataset::describe() const {
  return fmt::format("{}: {} of {} examples ({})", name_, size(), parent_->size(), parent_->describe());
}

ValidationSplit split_validation(std::shared_ptr<const Dataset> dataset, double fraction, uint64_t seed,
                                 HoldOut how) {
  PEFT_CHECK(dataset, "data", "no dataset to split");
  const int64_t n = dataset->size();
  PEFT_CHECK(fraction > 0.0 && fraction < 1.0, "data", "validation_fraction must be in (0, 1), found {}", fraction);
  PEFT_CHECK(n >= 2, "data", "a validation split needs at least 2 training examples, found {}", n);
  const int64_t held = std::clamp<int64_t>(std::llround(fraction * static_cast<double>(n)), 1, n - 1);
  std::vector<bool> is_held(static_cast<size_t>(n), false);
  if (how == HoldOut::kTail) {
    std::fill(is_held.end() - held, is_held.end(), true);
  } else {
    const auto order = permutation(n, seed);
    for (int64_t k = 0; k < held; ++k) is_held[static_cast<size_t>(order[static_cast<size_t>(k)])] = true;
  }
  std::vector<int64_t> train, validation;
  for (int64_t i = 0; i < n; ++i) (is_held[static_cast<size_t>(i)] ? validation : train).push_back(i);
  return {std::make_shared<SubsetDataset>(dataset, std::move(train), "training set less its validation part"),
          std::make_shared<SubsetDataset>(dataset, std::move(validation), "validation part of the training set")};
}

}  // namespace peft::data
