// Scoring a sequence-to-sequence set by what the model generates: each source is decoded
// (generate_batch, greedy unless the config samples) and the decoded text compared with the
// target by exact match and ROUGE-L, averaged over the examples.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "peft/generate.h"

namespace peft {
class PeftModel;
namespace data {
class Dataset;
}
namespace tokenizers {
class Tokenizer;
}
}  // namespace peft

namespace peft::train {

struct GenerationScores {
  double exact_match = 0;  ///< mean of train::exact_match
  double rouge_l = 0;      ///< mean ROUGE-L F1
  int64_t examples = 0;
  /// The first few (source, prediction, target) triples, for a log.
  std::vector<std::vector<std::string>> samples;
  std::string to_json() const;
};

/// Generated ids as text: ids past the tokenizer's vocabulary (span-corruption sentinels, which a
/// model pretrained so may still emit) are written <extra_id_K>, K counted from the vocabulary's end.
std::string decode_generated(const tokenizers::Tokenizer& tokenizer, const std::vector<int64_t>& ids);

/// Whether `dataset` is sequence-to-sequence data (a Seq2SeqDataset, or a subset of one such as a
/// validation split): what evaluate_generation scores.
bool is_seq2seq(const data::Dataset& dataset);

/// Generates for the first `max_examples` records (0: all) in batches of `batch_size`. Stops at the
/// tokenizer's end-of-sequence token besides config.stop_tokens.
GenerationScores evaluate_generation(PeftModel& model, const data::Dataset& dataset,
                                     const tokenizers::Tokenizer& tokenizer, GenerationConfig config,
                                     int64_t batch_size = 16, int64_t max_examples = 0);

}  // namespace peft::train
