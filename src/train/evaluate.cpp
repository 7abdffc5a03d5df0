#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/train/distributed.h"
#include "peft/train/trainer.h"

namespace peft::train {

std::string EvalResult::to_json() const {
  std::string s = fmt::format("{{\"loss\": {:.6f}, \"examples\": {}", loss, examples);
  if (accuracy >= 0) s += fmt::format(", \"accuracy\": {:.6f}, \"macro_f1\": {:.6f}", accuracy, macro_f1);
  if (perplexity >= 0) s += fmt::format(", \"perplexity\": {:.4f}", perplexity);
  return s + "}";
}

EvalResult evaluate(const std::function<models::ModelOutput(const models::ModelInputs&)>& forward,
                    const data::Dataset& dataset, int64_t batch_size, int64_t max_batches, c10::Device device,
                    DistributedContext* distributed) {
  torch::NoGradGuard no_grad;
  const bool classifier = !dataset.labels().empty();
  const int rank = distributed ? distributed->rank() : 0, world = distributed ? distributed->world_size() : 1;
  EvalResult r;
  double loss_sum = 0;
  int64_t examples = 0;
  // Predictions as a confusion matrix [truth, prediction]: sums reduce exactly across ranks. A
  // prediction outside the dataset's labels (a wider head) counts in one extra column.
  const auto labels = static_cast<int64_t>(dataset.labels().size());
  at::Tensor confusion = torch::zeros({std::max<int64_t>(labels, 1), labels + 1}, torch::kLong);
  int64_t batch = 0;
  for (int64_t start = 0; start < dataset.size(); start += batch_size, ++batch) {
    if (max_batches > 0 && batch >= max_batches) break;
    if (batch % world != rank) continue;  // each rank its share of the batches
    std::vector<int64_t> idx;
    for (int64_t i = start; i < std::min(dataset.size(), start + batch_size); ++i) idx.push_back(i);
    auto in = to_device(dataset.batch(idx), device);
    auto out = forward(in);
    PEFT_CHECK(out.loss.defined(), "train", "the model returned no loss for an evaluation batch (are labels set?)");
    loss_sum += out.loss.item<double>() * static_cast<double>(idx.size());
    examples += static_cast<int64_t>(idx.size());
    if (classifier) {
      const auto p = out.logits.argmax(-1).cpu().to(torch::kLong);
      const auto y = in.labels.cpu().to(torch::kLong);
      PEFT_CHECK(y.max().item<int64_t>() < labels && y.min().item<int64_t>() >= 0, "train",
                 "an evaluation batch has a label outside the dataset's {} labels", labels);
      confusion.view({-1}).index_add_(0, y * (labels + 1) + p.clamp_max(labels), torch::ones_like(y));
    }
  }
  if (distributed) {
    std::vector<at::Tensor> sums = {torch::tensor({loss_sum}, torch::kFloat64), torch::tensor({examples}, torch::kLong),
                                    confusion};
    distributed->all_reduce_sum(sums);
    loss_sum = sums[0].item<double>();
    examples = sums[1].item<int64_t>();
    confusion = sums[2];
  }
  r.examples = examples;
  PEFT_CHECK(r.examples > 0, "train", "the evaluation set is empty");
  r.loss = loss_sum / static_cast<double>(r.examples);
  if (classifier) {
    const auto total = confusion.sum().item<int64_t>();
    r.accuracy = static_cast<double>(confusion.narrow(1, 0, labels).diagonal().sum().item<int64_t>()) /
                 static_cast<double>(total);
    // Macro-F1 over the classes that occur as a truth or a prediction.
    double f1_sum = 0;
    int64_t classes = 0;
    for (int64_t c = 0; c <= labels; ++c) {
      const int64_t tp = c < labels ? confusion[c][c].item<int64_t>() : 0;
      const int64_t fn = c < labels ? confusion[c].sum().item<int64_t>() - tp : 0;
      const int64_t fp = confusion.select(1, c).sum().item<int64_t>() - tp;
      if (tp + fn + fp == 0) continue;
      ++classes;
      f1_sum += tp == 0 ? 0.0 : 2.0 * static_cast<double>(tp) / static_cast<double>(2 * tp + fp + fn);
    }
    r.macro_f1 = f1_sum / static_cast<double>(classes);
  } else {
    r.perplexity = std::exp(r.loss);
  }
  return r;
}

}  // namespace peft::train
