#include "peft/data/text_blocks.h"

#include <fstream>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::data {

TextBlocksDataset::TextBlocksDataset(const std::string& path, std::shared_ptr<const tokenizers::Tokenizer> tokenizer,
                                     TextBlocksOptions options)
    : path_(path), options_(options) {
  PEFT_CHECK(options_.block_size >= 2, "data", "block_size must be at least 2, found {}", options_.block_size);
  std::ifstream in(path, std::ios::binary);
  PEFT_CHECK(in.good(), "data", "{}: cannot open the text file", path);
  const auto eot = tokenizer->special().eos;
  const int64_t vocab = tokenizer->vocab_size();
  std::string line, paragraph;
  auto flush = [&](bool end_of_document) {
    if (!paragraph.empty())
      for (int64_t id : tokenizer->encode(paragraph, /*add_special_tokens=*/false)) {
        PEFT_CHECK(id < vocab && id <= INT32_MAX, "data", "token id {} out of range", id);
        tokens_.push_back(static_cast<int32_t>(id));
      }
    paragraph.clear();
    if (end_of_document && eot && !tokens_.empty() && tokens_.back() != *eot) tokens_.push_back(static_cast<int32_t>(*eot));
  };
  while (std::getline(in, line)) {
    if (options_.max_tokens > 0 && static_cast<int64_t>(tokens_.size()) >= options_.max_tokens) break;
    if (line.empty()) {
      flush(true);  // a blank line separates documents
    } else {
      paragraph = line + "\n";
      flush(false);
    }
  }
  flush(true);
  if (options_.max_tokens > 0 && static_cast<int64_t>(tokens_.size()) > options_.max_tokens)
    tokens_.resize(static_cast<size_t>(options_.max_tokens));
  PEFT_CHECK(size() > 0, "data", "{}: {} tokens make no block of {}", path, tokens_.size(), options_.block_size);
}

models::ModelInputs TextBlocksDataset::batch(const std::vector<int64_t>& indices) const {
  const int64_t T = options_.block_size;
  auto ids = torch::empty({static_cast<int64_t>(indices.size()), T}, torch::kLong);
  auto acc = ids.accessor<int64_t, 2>();
  for (size_t b = 0; b < indices.size(); ++b) {
    PEFT_CHECK(indices[b] >= 0 && indices[b] < size(), "data", "block {} is outside [0, {})", indices[b], size());
    const int32_t* src = tokens_.data() + indices[b] * T;
    for (int64_t t = 0; t < T; ++t) acc[static_cast<int64_t>(b)][t] = src[t];
  }
  models::ModelInputs in;
  in.input_ids = ids;
  in.labels = ids;
  return in;
}

std::string TextBlocksDataset::describe() const {
  return fmt::format("{}: {} tokens, {} blocks of {}", path_, tokens(), size(), options_.block_size);
}

}  // namespace peft::data
