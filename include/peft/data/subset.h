// A view of some examples of another dataset, and the validation split carved from a training
// set: model selection (best/, early stopping, learning rates) needs data that is neither
// trained on nor the test set.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "peft/data/dataset.h"

namespace peft::data {

class SubsetDataset : public Dataset {
 public:
  /// `indices` into `parent`, in the order this view presents them; `name` says what it is in describe().
  SubsetDataset(std::shared_ptr<const Dataset> parent, std::vector<int64_t> indices, std::string name);
  int64_t size() const override { return static_cast<int64_t>(indices_.size()); }
  models::ModelInputs batch(const std::vector<int64_t>& indices) const override;
  std::vector<std::string> labels() const override { return parent_->labels(); }
  std::string describe() const override;
  const std::vector<int64_t>& indices() const { return indices_; }
  const std::shared_ptr<const Dataset>& parent() const { return parent_; }

 private:
  std::shared_ptr<const Dataset> parent_;
  std::vector<int64_t> indices_;
  std::string name_;
};

struct ValidationSplit {
  std::shared_ptr<Dataset> train, validation;
};

/// How the held-out examples are chosen: a seeded random sample (independent examples), or the
/// last ones (consecutive blocks of one text, where neighbours share context).
enum class HoldOut { kRandom, kTail };

/// Holds out about `fraction` (in (0, 1)) of `dataset` — at least one example, leaving at least
/// one — as a validation set; the rest trains. Both keep the parent's order; the split depends on
/// `seed` alone, so every training seed of a task sees the same validation set.
ValidationSplit split_validation(std::shared_ptr<const Dataset> dataset, double fraction, uint64_t seed,
                                 HoldOut how = HoldOut::kRandom);

}  // namespace peft::data
