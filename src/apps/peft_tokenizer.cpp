// peft-tokenizer: train a SentencePiece BPE tokenizer (written as tokenizer.json), or encode /
// decode text with any model directory's tokenizer.
#include <iostream>

#include <CLI/CLI.hpp>

#include "peft/core/process.h"
#include "peft/core/error.h"
#include "peft/tokenizers/sentencepiece.h"
#include "peft/tokenizers/tokenizer.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Train a SentencePiece BPE tokenizer, or encode/decode with a model directory's tokenizer.",
               "peft-tokenizer"};
  app.require_subcommand(1);
  std::string corpus, out, dir, text;
  peft::tokenizers::SentencePieceOptions o;
  bool no_special = false;
  auto* train = app.add_subcommand("train", "train a BPE vocabulary with spm_train; writes tokenizer.json into --out");
  train->add_option("--corpus", corpus, "UTF-8 text, one sentence or paragraph per line")->required();
  train->add_option("--out", out, "output directory")->required();
  train->add_option("--vocab-size", o.vocab_size, "vocabulary size")->capture_default_str();
  train->add_option("--max-sentences", o.max_sentences, "lines sampled for training")->capture_default_str();
  auto* encode = app.add_subcommand("encode", "print the token ids of each stdin line (or --text)");
  encode->add_option("--tokenizer", dir, "directory with tokenizer.json or vocab.json + merges.txt")->required();
  encode->add_option("--text", text, "text to encode instead of stdin");
  encode->add_flag("--no-special", no_special, "do not add the tokenizer's special tokens");
  auto* decode = app.add_subcommand("decode", "print the text of each stdin line of ids");
  decode->add_option("--tokenizer", dir, "directory with tokenizer.json or vocab.json + merges.txt")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (*train) {
    peft::tokenizers::train_sentencepiece_bpe(corpus, out, o);
    auto tok = peft::tokenizers::load_tokenizer(out);
    fmt::print("wrote {}/tokenizer.json ({} tokens)\n", out, tok->vocab_size());
    return 0;
  }
  auto tok = peft::tokenizers::load_tokenizer(dir);
  if (*encode) {
    auto emit = [&](const std::string& line) { fmt::print("{}\n", fmt::join(tok->encode(line, !no_special), " ")); };
    if (!text.empty()) emit(text);
    else
      for (std::string line; std::getline(std::cin, line);) emit(line);
  } else {
    for (std::string line; std::getline(std::cin, line);) {
      std::vector<int64_t> ids;
      std::istringstream ss(line);
      for (int64_t v; ss >> v;) ids.push_back(v);
      fmt::print("{}\n", tok->decode(ids));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return peft::core::run_main("peft-tokenizer", [&] { return run(argc, argv); }); }
