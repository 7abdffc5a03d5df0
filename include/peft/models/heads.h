// What every family's task heads share: the classification fields of config.json, the losses
// Hugging Face computes for each head, and decoder pooling on the last real token.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

namespace peft::models {

struct HeadConfig {
  int64_t num_labels = 2;
  std::string problem_type;               ///< "", regression, single_label_classification, multi_label_classification
  std::optional<int64_t> pad_token_id;    ///< decoders pool on the token before the first pad
  std::optional<double> classifier_dropout;

  /// num_labels from "num_labels" or the size of "id2label" (HF omits both for the default 2).
  static HeadConfig from_json(const nlohmann::json& j, const std::string& component);
  /// Writes num_labels as HF does (id2label / label2id), keeping existing label names.
  void to_json(nlohmann::json& j) const;
};

/// Mean next-token cross-entropy: logits [b, t, v] predict labels [b, t] shifted by one; -100 ignored.
/// `per_example`: [b], each row's mean over its own labelled tokens (0 for a row with none).
at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels, bool per_example = false);

/// Mean token cross-entropy without a shift (an encoder-decoder's labels align with its logits):
/// logits [b, t, v], labels [b, t], -100 ignored. `per_example`: [b], as causal_lm_loss.
at::Tensor seq2seq_lm_loss(const at::Tensor& logits, const at::Tensor& labels, bool per_example = false);

/// HF's sequence-classification loss, choosing the problem type as HF does when it is unset:
/// one label = regression (MSE), integer labels = cross-entropy, else multi-label (BCE with logits).
/// `per_example`: [b], each row's own loss (ignored rows 0).
at::Tensor classification_loss(const at::Tensor& logits, const at::Tensor& labels, const HeadConfig& head,
                               bool per_example = false);

/// Decoder pooling index per row, as HF's *ForSequenceClassification: the token before the first
/// pad_token_id (the last token when there is none). Without pad_token_id only batch size 1 is
/// unambiguous, unless an attention_mask says where each row ends (right padding).
at::Tensor last_token_index(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                            const std::optional<int64_t>& pad_token_id, const std::string& component);

/// rows of hidden [b, t, d] at index [b] -> [b, d]
at::Tensor gather_rows(const at::Tensor& hidden, const at::Tensor& index);

}  // namespace peft::models
