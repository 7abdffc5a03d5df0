// JSONL classification records: the input is the data file, read with the bundled tokenizer,
// with and without skip_bad_records; every batch is collated.
#include <string>

#include "fuzz_input.h"
#include "peft/data/text_classification.h"
#include "peft/tokenizers/tokenizer.h"

#ifndef PEFT_FUZZ_TOKENIZER
#error "PEFT_FUZZ_TOKENIZER: the directory of the tokenizer the harness reads records with"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tok = peft::tokenizers::load_tokenizer(PEFT_FUZZ_TOKENIZER);
  const auto& path = peft::fuzz::write_input(data, size, "train.jsonl");
  for (bool skip : {false, true})
    peft::fuzz::accept_errors([&] {
      peft::data::TextClassificationOptions o;
      o.max_length = 32;
      o.skip_bad_records = skip;
      peft::data::TextClassificationDataset ds(path, tok, o);
      for (int64_t i = 0; i < ds.size(); ++i) ds.batch({i});
    });
  return 0;
}
