// Sequence-classification deltas served beside a causal LM on the same frozen base: one
// classifier per label count, its backbone sharing the base's storage (models::share_weights),
// each delta attached to the classifier of its own head's size. Safe to use from many threads.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "peft/models/load.h"

namespace peft {
class PeftModel;
}

namespace peft::serve {

struct Classification {
  int64_t label = 0;                 ///< the most probable label's index
  std::vector<double> probabilities;  ///< softmax over the labels (sigmoid each for multi-label heads)
};

class ClassifierPool {
 public:
  /// Classifiers of the model in `model_dir` (loaded with `options`, task sequence_classification);
  /// their backbone tensors are `base`'s where given (frozen: never merged into), else the first one's.
  ClassifierPool(std::string model_dir, models::LoadOptions options, std::shared_ptr<models::PretrainedModel> base = {});
  ~ClassifierPool();

  /// Whether the delta in `dir` is for sequence classification (adapter_config.json task_type SEQ_CLS).
  static bool is_classifier_delta(const std::string& dir);
  /// Attaches the delta in `dir` as `name`; its label count is its head's (the saved score /
  /// classifier tensor), else the base config's. Errors (peft::Error) name the file and key.
  void load(const std::string& name, const std::string& dir);
  bool has(const std::string& name) const;
  /// Detaches `name` (false when it is not here).
  bool remove(const std::string& name);
  std::vector<std::string> adapters() const;
  std::string method(const std::string& name) const;
  /// The delta's label names (config.json's id2label when its size matches, else LABEL_i).
  std::vector<std::string> labels(const std::string& name) const;
  /// Each token sequence classified with delta `name` (each on its own: no padding involved).
  std::vector<Classification> classify(const std::string& name, const std::vector<std::vector<int64_t>>& inputs);

 private:
  struct Head;
  Head& head_for(int64_t num_labels);         // under mutex_: built on first use
  Head& head_of(const std::string& name) const;  // under mutex_: the loaded delta's, else an error
  int64_t delta_num_labels(const std::string& dir);

  std::string model_dir_;
  models::LoadOptions options_;
  std::shared_ptr<models::PretrainedModel> base_;
  mutable std::mutex mutex_;
  std::map<int64_t, std::unique_ptr<Head>> heads_;  // by label count
  std::map<std::string, int64_t> deltas_;           // name -> label count
};

}  // namespace peft::serve
