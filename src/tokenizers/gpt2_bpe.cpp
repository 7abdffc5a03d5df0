// GPT-2 byte-level BPE from vocab.json + merges.txt.
#include <fstream>

#include <nlohmann/json.hpp>

#include "bpe_model.h"
#include "byte_level.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/tokenizers/tokenizer.h"

namespace peft::tokenizers {
namespace {

constexpr const char* kC = "tokenizers";

class Gpt2Bpe : public Tokenizer {
 public:
  Gpt2Bpe(BpeModel model) : bpe_(std::move(model)) {
    for (int b = 0; b < 256; ++b) {
      auto id = bpe_.id(byte_to_char()[b]);
      PEFT_CHECK(id.has_value(), kC, "vocab.json lacks the byte token for byte {} ('{}')", b, byte_to_char()[b]);
      byte_ids_[b] = *id;
    }
    if (auto eot = bpe_.id("<|endoftext|>")) special_.bos = special_.eos = eot;
  }

  std::vector<int64_t> encode(std::string_view text, bool) const override {
    std::vector<int64_t> out;
    for (auto piece : gpt2_pretokenize(text)) {
      std::vector<int64_t> symbols;
      symbols.reserve(piece.size());
      for (unsigned char b : piece) symbols.push_back(byte_ids_[b]);
      auto merged = bpe_.merge(std::move(symbols));
      out.insert(out.end(), merged.begin(), merged.end());
    }
    return out;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::string chars;
    for (int64_t id : ids) {
      if (skip_special_tokens && special_.eos && id == *special_.eos) continue;
      chars += id_to_token(id);
    }
    return chars_to_bytes(chars);
  }

  int64_t vocab_size() const override { return bpe_.size(); }
  std::optional<int64_t> token_to_id(const std::string& token) const override { return bpe_.id(token); }
  std::string id_to_token(int64_t id) const override {
    PEFT_CHECK(id >= 0 && id < bpe_.size(), kC, "token id {} is outside the vocabulary [0, {})", id, bpe_.size());
    return bpe_.token(id);
  }
  std::string kind() const override { return "gpt2-bpe"; }

 private:
  BpeModel bpe_;
  int64_t byte_ids_[256];
};

}  // namespace

std::shared_ptr<Tokenizer> load_gpt2_bpe(const std::string& vocab_json, const std::string& merges_txt) {
  BpeModel model(dense_vocab(core::read_json_file(vocab_json), vocab_json));
  std::ifstream in(merges_txt);
  PEFT_CHECK(in.good(), kC, "{}: cannot open the merges file", merges_txt);
  std::string line;
  int32_t rank = 0;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (number == 1 && line.rfind("#version", 0) == 0)) continue;
    const auto space = line.find(' ');
    PEFT_CHECK(space != std::string::npos && space > 0 && space + 1 < line.size() &&
                   line.find(' ', space + 1) == std::string::npos,
               kC, "{}:{}: expected two tokens separated by one space, found '{}'", merges_txt, number, line);
    PEFT_CHECK(model.add_merge(line.substr(0, space), line.substr(space + 1), rank++), kC,
               "{}:{}: merge '{}' uses or makes a token missing from {}", merges_txt, number, line, vocab_json);
  }
  PEFT_CHECK(model.merge_count() > 0, kC, "{}: no merges", merges_txt);
  return std::make_shared<Gpt2Bpe>(std::move(model));
}

}  // namespace peft::tokenizers
