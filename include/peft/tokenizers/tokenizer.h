// Tokenizers: text <-> token ids, chosen from a model directory's files as Hugging Face does.
//
//   tokenizer.json            Hugging Face `tokenizers` file: BPE (byte-level like GPT-2, or
//                             SentencePiece-style with byte fallback like Llama/Mistral)
//   vocab.json + merges.txt   GPT-2 byte-level BPE
//   tokenizer.model           SentencePiece model (needs libsentencepiece at run time)
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace peft::tokenizers {

struct SpecialTokens {
  std::optional<int64_t> bos, eos, pad, unk;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// `add_special_tokens`: what the tokenizer's post-processor adds (Llama: <s> first; GPT-2: nothing).
  virtual std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = true) const = 0;
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> token_to_id(const std::string& token) const = 0;
  /// An id outside the vocabulary is an error naming it.
  virtual std::string id_to_token(int64_t id) const = 0;
  /// "gpt2-bpe", "tokenizer.json", "sentencepiece"
  virtual std::string kind() const = 0;
  const SpecialTokens& special() const { return special_; }

 protected:
  SpecialTokens special_;
};

/// GPT-2 byte-level BPE from vocab.json (token -> id) and merges.txt.
std::shared_ptr<Tokenizer> load_gpt2_bpe(const std::string& vocab_json, const std::string& merges_txt);
/// A Hugging Face tokenizer.json (BPE model; the normalizers, pre-tokenizers, post-processors
/// and decoders that BPE tokenizers use). Unsupported components are an error naming them.
std::shared_ptr<Tokenizer> load_tokenizer_json(const std::string& path);
/// Picks the tokenizer from a model directory's files (tokenizer.json first, as HF's fast
/// tokenizers do); a directory with none of them is an error listing what was looked for.
std::shared_ptr<Tokenizer> load_tokenizer(const std::string& dir);

}  // namespace peft::tokenizers
