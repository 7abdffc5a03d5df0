// tokenizer.json loading, then encoding and decoding a fixed text and the input itself.
#include <string>

#include "fuzz_input.h"
#include "peft/tokenizers/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& path = peft::fuzz::write_input(data, size, "tokenizer.json");
  return peft::fuzz::accept_errors([&] {
    auto tok = peft::tokenizers::load_tokenizer_json(path);
    const std::string text(reinterpret_cast<const char*>(data), std::min<size_t>(size, 256));
    for (const std::string& t : {std::string("Hello world, it's 2024!  \u00e9\u4e2d"), text}) tok->decode(tok->encode(t));
  });
}
