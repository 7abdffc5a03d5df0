#include <filesystem>

#include "peft/core/error.h"
#include "peft/tokenizers/tokenizer.h"

namespace peft::tokenizers {

std::shared_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path d(dir);
  PEFT_CHECK(fs::is_directory(d), "tokenizers", "'{}' is not a directory", dir);
  if (fs::exists(d / "tokenizer.json")) return load_tokenizer_json((d / "tokenizer.json").string());
  if (fs::exists(d / "vocab.json") && fs::exists(d / "merges.txt"))
    return load_gpt2_bpe((d / "vocab.json").string(), (d / "merges.txt").string());
  fail("tokenizers", fmt::format("{}: no tokenizer found (looked for tokenizer.json, or vocab.json + merges.txt)", dir));
}

}  // namespace peft::tokenizers
