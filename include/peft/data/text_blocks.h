// Language-modelling data: a UTF-8 text file read line by line, tokenized, joined (documents
// separated by the tokenizer's end-of-text token), and cut into fixed-length blocks.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "peft/data/dataset.h"
#include "peft/tokenizers/tokenizer.h"

namespace peft::data {

struct TextBlocksOptions {
  int64_t block_size = 128;
  /// Stop after this many tokens (0: the whole file).
  int64_t max_tokens = 0;
};

class TextBlocksDataset : public Dataset {
 public:
  TextBlocksDataset(const std::string& path, std::shared_ptr<const tokenizers::Tokenizer> tokenizer,
                    TextBlocksOptions options);
  int64_t size() const override { return static_cast<int64_t>(tokens_.size()) / options_.block_size; }
  /// input_ids = labels = the blocks (the model shifts labels itself); no padding needed.
  models::ModelInputs batch(const std::vector<int64_t>& indices) const override;
  std::string describe() const override;
  int64_t tokens() const { return static_cast<int64_t>(tokens_.size()); }

 private:
  std::string path_;
  TextBlocksOptions options_;
  std::vector<int32_t> tokens_;
};

}  // namespace peft::data
