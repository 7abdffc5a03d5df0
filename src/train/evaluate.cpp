#include <cmath>
#include <set>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/train/trainer.h"

namespace peft::train {

std::string EvalResult::to_json() const {
  std::string s = fmt::format("{{\"loss\": {:.6f}, \"examples\": {}", loss, examples);
  if (accuracy >= 0) s += fmt::format(", \"accuracy\": {:.6f}, \"macro_f1\": {:.6f}", accuracy, macro_f1);
  if (perplexity >= 0) s += fmt::format(", \"perplexity\": {:.4f}", perplexity);
  return s + "}";
}

EvalResult evaluate(const std::function<models::ModelOutput(const models::ModelInputs&)>& forward,
                    const data::Dataset& dataset, int64_t batch_size, int64_t max_batches, c10::Device device) {
  torch::NoGradGuard no_grad;
  const bool classifier = !dataset.labels().empty();
  EvalResult r;
  double loss_sum = 0;
  std::vector<int64_t> truth, pred;
  int64_t batches = 0;
  for (int64_t start = 0; start < dataset.size(); start += batch_size) {
    if (max_batches > 0 && batches++ >= max_batches) break;
    std::vector<int64_t> idx;
    for (int64_t i = start; i < std::min(dataset.size(), start + batch_size); ++i) idx.push_back(i);
    auto in = to_device(dataset.batch(idx), device);
    auto out = forward(in);
    PEFT_CHECK(out.loss.defined(), "train", "the model returned no loss for an evaluation batch (are labels set?)");
    loss_sum += out.loss.item<double>() * static_cast<double>(idx.size());
    r.examples += static_cast<int64_t>(idx.size());
    if (classifier) {
      auto p = out.logits.argmax(-1).cpu();
      auto y = in.labels.cpu();
      for (int64_t k = 0; k < p.size(0); ++k) {
        pred.push_back(p[k].item<int64_t>());
        truth.push_back(y[k].item<int64_t>());
      }
    }
  }
  PEFT_CHECK(r.examples > 0, "train", "the evaluation set is empty");
  r.loss = loss_sum / static_cast<double>(r.examples);
  if (classifier) {
    int64_t correct = 0;
    std::set<int64_t> classes;
    for (size_t i = 0; i < truth.size(); ++i) {
      correct += truth[i] == pred[i];
      classes.insert(truth[i]);
      classes.insert(pred[i]);
    }
    r.accuracy = static_cast<double>(correct) / static_cast<double>(truth.size());
    double f1_sum = 0;
    for (int64_t c : classes) {
      int64_t tp = 0, fp = 0, fn = 0;
      for (size_t i = 0; i < truth.size(); ++i) {
        tp += truth[i] == c && pred[i] == c;
        fp += truth[i] != c && pred[i] == c;
        fn += truth[i] == c && pred[i] != c;
      }
      f1_sum += tp == 0 ? 0.0 : 2.0 * static_cast<double>(tp) / static_cast<double>(2 * tp + fp + fn);
    }
    r.macro_f1 = f1_sum / static_cast<double>(classes.size());
  } else {
    r.perplexity = std::exp(r.loss);
  }
  return r;
}

}  // namespace peft::train
