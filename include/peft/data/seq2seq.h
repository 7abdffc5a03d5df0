// Sequence-to-sequence JSONL: one {"source": ..., "target": ...} object per line (field names
// configurable, so a classification file's text and label can serve as source and target). The
// file is indexed in one streaming pass; records are read and tokenized per batch.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "peft/data/dataset.h"
#include "peft/tokenizers/tokenizer.h"

namespace peft::data {

struct Seq2SeqOptions {
  std::string source_field = "source";
  std::string target_field = "target";
  /// Put before every source text (T5's task prefixes, e.g. "summarize: ").
  std::string source_prefix;
  int64_t max_source_length = 256;  ///< tokens, the end-of-sequence token included; longer ones are cut
  int64_t max_target_length = 64;
  int64_t pad_id = 0;                ///< fills short sources (masked); labels are padded with -100
  /// Appended to every source and target (T5 ends both with </s>); unset: nothing is appended.
  std::optional<int64_t> eos_id;
  bool skip_bad_records = false;
};

class JsonlRecords;

class Seq2SeqDataset : public Dataset {
 public:
  Seq2SeqDataset(const std::string& path, std::shared_ptr<const tokenizers::Tokenizer> tokenizer, Seq2SeqOptions options);
  ~Seq2SeqDataset() override;
  int64_t size() const override;
  /// input_ids / attention_mask (right-padded sources), labels (targets, -100 past each end).
  models::ModelInputs batch(const std::vector<int64_t>& indices) const override;
  std::string describe() const override;

  /// The record's (source, target) texts, the source prefix included (read from the file).
  std::pair<std::string, std::string> record(int64_t index) const;
  std::string source(int64_t index) const;
  std::string target(int64_t index) const;
  /// The tokens the model reads for a source text (truncation and end token applied).
  std::vector<int64_t> source_tokens(const std::string& source) const;
  /// The tokens the model reads for record `index`.
  std::vector<int64_t> source_tokens(int64_t index) const { return source_tokens(source(index)); }
  const Seq2SeqOptions& options() const { return options_; }
  int64_t skipped() const;

 private:
  std::vector<int64_t> encode(const std::string& text, int64_t max_length) const;

  std::string path_;
  std::shared_ptr<const tokenizers::Tokenizer> tokenizer_;
  Seq2SeqOptions options_;
  std::unique_ptr<JsonlRecords> records_;  // records are read on demand
};

}  // namespace peft::data
