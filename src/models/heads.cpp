#include "peft/models/heads.h"

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/nn/cross_entropy.h"
#include "peft/core/json_io.h"

namespace peft::models {
namespace F = torch::nn::functional;

HeadConfig HeadConfig::from_json(const nlohmann::json& j, const std::string& component) {
  HeadConfig h;
  const std::string w = "config.json";
  if (j.contains("num_labels") && !j["num_labels"].is_null()) {
    h.num_labels = core::get_or<int64_t>(j, "num_labels", 2, component, w);
  } else if (j.contains("id2label") && j["id2label"].is_object()) {
    h.num_labels = static_cast<int64_t>(j["id2label"].size());
  }
  PEFT_CHECK(h.num_labels >= 1, component, "config.json: num_labels must be at least 1, found {}", h.num_labels);
  if (j.contains("problem_type") && !j["problem_type"].is_null())
    h.problem_type = core::get_or<std::string>(j, "problem_type", "", component, w);
  PEFT_CHECK(h.problem_type.empty() || h.problem_type == "regression" ||
                 h.problem_type == "single_label_classification" || h.problem_type == "multi_label_classification",
             component,
             "config.json: problem_type must be regression, single_label_classification or "
             "multi_label_classification, found '{}'",
             h.problem_type);
  if (j.contains("pad_token_id") && !j["pad_token_id"].is_null())
    h.pad_token_id = core::get_or<int64_t>(j, "pad_token_id", 0, component, w);
  if (j.contains("classifier_dropout") && !j["classifier_dropout"].is_null())
    h.classifier_dropout = core::get_or<double>(j, "classifier_dropout", 0.0, component, w);
  return h;
}

void HeadConfig::to_json(nlohmann::json& j) const {
  const bool same = j.contains("id2label") && j["id2label"].is_object() &&
                    static_cast<int64_t>(j["id2label"].size()) == num_labels;
  if (!same) {
    nlohmann::json id2label = nlohmann::json::object(), label2id = nlohmann::json::object();
    for (int64_t i = 0; i < num_labels; ++i) {
      id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
      label2id["LABEL_" + std::to_string(i)] = i;
    }
    j["id2label"] = id2label;
    j["label2id"] = label2id;
  }
  j.erase("num_labels");
  j["problem_type"] = problem_type.empty() ? nlohmann::json(nullptr) : nlohmann::json(problem_type);
  if (pad_token_id) j["pad_token_id"] = *pad_token_id;
  if (classifier_dropout) j["classifier_dropout"] = *classifier_dropout;
}

namespace {
at::Tensor upcast_half(const at::Tensor& t) {
  // Half-precision logits are upcast for a stable loss; float32/float64 stay as they are.
  if (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16) return t.to(at::kFloat);
  return t;
}
}  // namespace

namespace {
/// Mean cross-entropy of logits [b, t, v] against targets [b, t] (-100 ignored); per row with `per_example`.
at::Tensor token_loss(const at::Tensor& logits, const at::Tensor& targets, bool per_example) {
  if (per_example) {
    at::Tensor x = upcast_half(logits);
    at::Tensor token = F::cross_entropy(x.reshape({-1, x.size(-1)}), targets.reshape({-1}),
                                        F::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kNone));
    at::Tensor count = targets.ne(-100).sum(1).clamp_min(1).to(token.scalar_type());
    return token.view(targets.sizes()).sum(1) / count;
  }
  // Half-precision logits: no float32 copy of [B·T, V] (the float32 loss, chunk by chunk).
  if (logits.scalar_type() == at::kHalf || logits.scalar_type() == at::kBFloat16)
    return nn::chunked_cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}), -100);
  return F::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}),
                          F::CrossEntropyFuncOptions().ignore_index(-100));
}

void check_token_labels(const at::Tensor& logits, const at::Tensor& labels, const char* what) {
  PEFT_CHECK(labels.dim() == 2 && labels.size(0) == logits.size(0) && labels.size(1) == logits.size(1), "models",
             "labels have shape {}, expected [{}, {}] like {}", c10::str(labels.sizes()), logits.size(0), logits.size(1), what);
}
}  // namespace

at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels, bool per_example) {
  check_token_labels(logits, labels, "input_ids");
  // Position t predicts token t+1: shift the labels (the last position predicts nothing, -100) rather
  // than the logits, so the [B, T, V] logits are neither copied nor scattered back in the backward.
  const int64_t T = logits.size(1);
  at::Tensor next = labels.to(logits.device(), torch::kLong).slice(1, 1, T);
  at::Tensor shifted = torch::cat({next, torch::full({labels.size(0), 1}, -100, next.options())}, 1);
  return token_loss(logits, shifted, per_example);
}

at::Tensor seq2seq_lm_loss(const at::Tensor& logits, const at::Tensor& labels, bool per_example) {
  check_token_labels(logits, labels, "decoder_input_ids");
  return token_loss(logits, labels.to(logits.device(), torch::kLong), per_example);
}

at::Tensor classification_loss(const at::Tensor& logits, const at::Tensor& labels, const HeadConfig& head,
                               bool per_example) {
  std::string type = head.problem_type;
  if (type.empty()) {
    if (head.num_labels == 1) type = "regression";
    else if (!labels.is_floating_point()) type = "single_label_classification";
    else type = "multi_label_classification";
  }
  const int64_t B = logits.size(0);
  at::Tensor x = upcast_half(logits);
  if (type == "regression") {
    PEFT_CHECK(labels.numel() == logits.numel(), "models", "regression labels have shape {}, expected {} values",
               c10::str(labels.sizes()), logits.numel());
    if (per_example)
      return F::mse_loss(x.reshape(labels.sizes()), labels.to(x.scalar_type()), F::MSELossFuncOptions().reduction(torch::kNone)).reshape({B, -1}).mean(1);
    return F::mse_loss(x.reshape(labels.sizes()), labels.to(x.scalar_type()));
  }
  if (type == "single_label_classification") {
    PEFT_CHECK(!labels.is_floating_point() && labels.numel() == B, "models",
               "classification labels must be {} integer class indices, found {} of shape {}", B,
               c10::toString(labels.scalar_type()), c10::str(labels.sizes()));
    at::Tensor y = labels.reshape({-1}).to(torch::kLong);
    const int64_t bad = ((y < 0) & (y != -100)).logical_or(y >= head.num_labels).sum().item<int64_t>();
    PEFT_CHECK(bad == 0, "models", "{} label(s) outside [0, {}) (and not -100)", bad, head.num_labels);
    auto options = F::CrossEntropyFuncOptions().ignore_index(-100);
    if (per_example) options = options.reduction(torch::kNone);
    return F::cross_entropy(x.reshape({-1, head.num_labels}), y, options);
  }
  PEFT_CHECK(labels.sizes() == logits.sizes(), "models", "multi-label targets have shape {}, expected {}",
             c10::str(labels.sizes()), c10::str(logits.sizes()));
  if (per_example)
    return F::binary_cross_entropy_with_logits(x, labels.to(x.scalar_type()),
                                               F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kNone))
        .reshape({B, -1})
        .mean(1);
  return F::binary_cross_entropy_with_logits(x, labels.to(x.scalar_type()));
}

at::Tensor last_token_index(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                            const std::optional<int64_t>& pad_token_id, const std::string& component) {
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  if (pad_token_id) {
    // First pad minus one; modulo turns "no pad" (argmax 0 -> -1) into the last token.
    at::Tensor first_pad = input_ids.eq(*pad_token_id).to(torch::kInt).argmax(-1);
    return torch::remainder(first_pad - 1, T);
  }
  if (attention_mask.defined()) return attention_mask.to(torch::kLong).sum(-1).sub(1).clamp_min(0);
  PEFT_CHECK(B == 1, component,
             "cannot find the last token of each row: config.json has no pad_token_id and no attention_mask was "
             "given (batch size {})",
             B);
  return torch::full({1}, T - 1, input_ids.options().dtype(torch::kLong));
}

at::Tensor gather_rows(const at::Tensor& hidden, const at::Tensor& index) {
  at::Tensor rows = torch::arange(hidden.size(0), index.options().dtype(torch::kLong));
  return hidden.index({rows, index.to(torch::kLong)});
}

}  // namespace peft::models
