// SentencePiece BPE for models this project pretrains itself: train with the `spm_train`
// binary (Debian package sentencepiece), then encode with an equivalent tokenizer.json —
// libsentencepiece itself cannot share a process with LibTorch (their protobuf versions clash).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace peft::tokenizers {

struct SentencePieceOptions {
  int vocab_size = 4000;
  double character_coverage = 0.9995;
  int threads = 2;
  int max_sentences = 200000;  ///< lines sampled from the corpus for training
};

/// Trains a BPE model (byte fallback, identity normalization, whitespace kept) on `corpus`
/// and writes spm.model, spm.vocab, tokenizer.json and tokenizer_config.json into `out_dir`.
void train_sentencepiece_bpe(const std::string& corpus, const std::string& out_dir,
                             const SentencePieceOptions& options = {});

/// The tokenizer.json of a SentencePiece BPE model from its .vocab file (piece<TAB>score per
/// line, ids in line order): merges are recovered from the pieces, ordered by the merged piece.
nlohmann::json sentencepiece_bpe_to_tokenizer_json(const std::string& vocab_file);

}  // namespace peft::tokenizers
