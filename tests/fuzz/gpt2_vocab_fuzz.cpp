// GPT-2 vocab.json + merges.txt: the input is split at the first NUL byte into the two files;
// then a fixed text and the input itself are encoded and decoded.
#include <string>

#include "fuzz_input.h"
#include "peft/tokenizers/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string all(reinterpret_cast<const char*>(data), size);
  const auto cut = std::min(all.find('\0'), all.size());
  const std::string vocab_text = all.substr(0, cut), merges_text = cut < all.size() ? all.substr(cut + 1) : "";
  const std::string vocab = peft::fuzz::write_input(reinterpret_cast<const uint8_t*>(vocab_text.data()), vocab_text.size(), "vocab.json");
  const std::string merges = peft::fuzz::write_input(reinterpret_cast<const uint8_t*>(merges_text.data()), merges_text.size(), "merges.txt");
  return peft::fuzz::accept_errors([&] {
    auto tok = peft::tokenizers::load_gpt2_bpe(vocab, merges);
    for (const std::string& t : {std::string("Hello world, it's 2024!"), all.substr(0, 256)}) tok->decode(tok->encode(t));
  });
}
