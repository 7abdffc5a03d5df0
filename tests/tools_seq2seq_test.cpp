// The tools on an encoder-decoder: peft-train with seq2seq_jsonl data on the bundled tiny T5,
// peft-eval's generation scores (exact match, ROUGE-L) on the validation split against the
// library's, and peft-generate's answer against in-process greedy decoding.
#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/generate.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/tokenizers/tokenizer.h"
#include "peft/train/generation_eval.h"
#include "peft/train/run_config.h"
#include "test_util.h"

#if defined(PEFT_TRAIN_BIN) && defined(PEFT_SOURCE_DIR)

namespace peft::test {
namespace {

TEST(Tools, Seq2SeqTrainEvalAndGenerateOnTheBundledT5) {
  TempDir dir;
  const std::string model = source("examples/models/tiny-t5-en");
  const nlohmann::json cfg = {
      {"model", model},
      {"task", "seq2seq_lm"},
      {"method", {{"peft_type", "LORA"}, {"task_type", "SEQ_2_SEQ_LM"}, {"r", 4}, {"target_modules", {"q", "v", "wo"}}}},
      {"data", {{"kind", "seq2seq_jsonl"},
                {"train", source("examples/data/brown/train.jsonl")},
                {"eval", source("examples/data/brown/test.jsonl")},
                {"source_field", "text"},
                {"target_field", "label"},
                {"validation_fraction", 0.1},
                {"max_source_length", 32},
                {"max_target_length", 8}}},
      {"trainer", {{"max_steps", 4}, {"batch_size", 4}, {"lr", 0.01}, {"eval_batches", 2}, {"log_every", 1}}},
      {"output_dir", dir.file("run")}};
  core::write_json_file(dir.file("run.json"), cfg);
  ASSERT_EQ(run(std::string(PEFT_TRAIN_BIN) + " --threads 1 --config " + dir.file("run.json"), dir.file("t.log")), 0)
      << slurp(dir.file("t.log"));
  EXPECT_NE(slurp(dir.file("run/log.jsonl")).find("\"perplexity\""), std::string::npos);

  ASSERT_EQ(run(std::string(PEFT_EVAL_BIN) + " --threads 1 --config " + dir.file("run.json") + " --split validation" +
                    " --generate-examples 6 --max-new-tokens 6 --batch 4 --adapter " + dir.file("run/final") + " --out " +
                    dir.file("eval.json"),
                dir.file("e.log")),
            0)
      << slurp(dir.file("e.log"));
  const auto scores = nlohmann::json::parse(slurp(dir.file("eval.json")));
  EXPECT_EQ(scores["generated"], 6);
  auto parts = train::build_run(cfg, "run.json", /*need_train=*/false);
  PeftModel ours(parts.model);
  checkpoint::load_adapter(ours, dir.file("run/final"));
  GenerationConfig g;
  g.max_new_tokens = 6;
  const auto expected = train::evaluate_generation(ours, *parts.validation, *parts.tokenizer, g, 4, 6);
  EXPECT_NEAR(scores["exact_match"].get<double>(), expected.exact_match, 1e-6);
  EXPECT_NEAR(scores["rouge_l"].get<double>(), expected.rouge_l, 1e-6);
  EXPECT_EQ(scores["examples"], parts.validation->size());

  // peft-generate answers a prompt as the library does (the prompt ends with </s>, as the data's do).
  const std::string prompt = "The jury said it did find that the election was conducted.";
  ASSERT_EQ(run(std::string(PEFT_GENERATE_BIN) + " --threads 1 --model " + model + " --adapter " + dir.file("run/final") +
                    " --max-new-tokens 6 --prompt '" + prompt + "'",
                dir.file("g.log")),
            0)
      << slurp(dir.file("g.log"));
  auto ids = parts.tokenizer->encode(prompt, false);
  ids.push_back(*parts.tokenizer->special().eos);
  g.stop_tokens = {*parts.tokenizer->special().eos};
  const std::string answer = train::decode_generated(*parts.tokenizer, generate(ours, ids, g).tokens);
  const std::string printed = slurp(dir.file("g.log"));
  ASSERT_GE(printed.size(), answer.size() + 1);
  EXPECT_EQ(printed.substr(printed.size() - answer.size() - 1), answer + "\n") << printed;
}

}  // namespace
}  // namespace peft::test

#endif
