// JSONL text classification: one {"text": ..., "label": ...} object per line. The file is
// indexed (byte offsets) and validated in one streaming pass; records are read and tokenized
// per batch, so files larger than memory work.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "peft/data/dataset.h"
#include "peft/tokenizers/tokenizer.h"

namespace peft::data {

struct TextClassificationOptions {
  std::string text_field = "text";
  std::string label_field = "label";
  int64_t max_length = 256;      ///< tokens per example, special tokens included; longer ones are cut
  int64_t pad_id = 0;
  /// Report and count malformed records (bad JSON, missing field, unknown label) instead of failing.
  bool skip_bad_records = false;
  /// The class names (index = class id). Empty: the sorted set of labels found in this file.
  std::vector<std::string> labels;
};

class JsonlRecords;

class TextClassificationDataset : public Dataset {
 public:
  TextClassificationDataset(const std::string& path, std::shared_ptr<const tokenizers::Tokenizer> tokenizer,
                            TextClassificationOptions options);
  ~TextClassificationDataset() override;
  int64_t size() const override;
  models::ModelInputs batch(const std::vector<int64_t>& indices) const override;
  std::vector<std::string> labels() const override { return options_.labels; }
  std::string describe() const override;

  std::string text(int64_t index) const;  ///< the record's text (read from the file)
  int64_t label(int64_t index) const { return label_ids_.at(static_cast<size_t>(index)); }
  int64_t skipped() const;
  int64_t truncated() const;

 private:
  std::string path_;
  std::shared_ptr<const tokenizers::Tokenizer> tokenizer_;
  TextClassificationOptions options_;
  std::unique_ptr<JsonlRecords> records_;  // records are read on demand
  std::vector<int64_t> label_ids_;
  mutable std::mutex mutex_;  // guards seen_truncated_
  mutable std::vector<bool> seen_truncated_;
};

}  // namespace peft::data
