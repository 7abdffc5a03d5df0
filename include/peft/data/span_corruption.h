// T5's span-corruption objective (Raffel et al. 2020, §3.1.4) over a text's fixed-length token
// blocks: about noise_density of each block's tokens, in spans of mean_noise_span_length, are cut
// out; the input keeps the rest with one sentinel per span, the target lists each sentinel and
// its span. Each block appears `variants` times with different spans (example i is block
// i / variants), and example i's spans follow from (seed, i) alone, so every run and resume sees
// the same examples.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "peft/data/dataset.h"
#include "peft/data/text_blocks.h"

namespace peft::data {

struct SpanCorruptionOptions {
  int64_t block_size = 128;     ///< tokens per block before corruption
  int64_t max_tokens = 0;       ///< read at most this many tokens (0: the whole file)
  double noise_density = 0.15;
  double mean_noise_span_length = 3.0;
  /// Span k's sentinel is sentinel_first + k (ids past the tokenizer's vocabulary, which the model's
  /// embedding must cover); sentinels is how many exist.
  int64_t sentinel_first = 0;
  int64_t sentinels = 100;
  int64_t eos_id = 1;           ///< ends every input and target
  uint64_t seed = 0;
  int64_t variants = 1;         ///< corruptions of each block (more examples from a small text)
};

/// Which of `length` positions are noise: T5's random_spans_noise_mask (spans alternate, the
/// first position is never noise), drawn from `seed`.
std::vector<bool> random_spans_noise_mask(int64_t length, double noise_density, double mean_noise_span_length,
                                          uint64_t seed);

/// (input, target) of one block under `noise`.
std::pair<std::vector<int64_t>, std::vector<int64_t>> corrupt_spans(const std::vector<int64_t>& tokens,
                                                                   const std::vector<bool>& noise, int64_t sentinel_first,
                                                                   int64_t eos_id);

class SpanCorruptionDataset : public Dataset {
 public:
  SpanCorruptionDataset(const std::string& path, std::shared_ptr<const tokenizers::Tokenizer> tokenizer,
                        SpanCorruptionOptions options);
  int64_t size() const override { return blocks_->size() * options_.variants; }
  /// input_ids / attention_mask (corrupted blocks) and labels (their targets); all rows of a
  /// dataset have the same lengths, since the span counts follow from block_size.
  models::ModelInputs batch(const std::vector<int64_t>& indices) const override;
  std::string describe() const override;
  /// The largest id an example holds (the last sentinel used): the model's vocabulary must exceed it.
  int64_t max_token_id() const;

 private:
  SpanCorruptionOptions options_;
  int64_t vocab_ = 0;
  std::unique_ptr<TextBlocksDataset> blocks_;
};

}  // namespace peft::data
