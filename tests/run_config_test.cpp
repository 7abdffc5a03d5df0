// Run configs read by the library: each part on its own, overrides, and the named errors the
// tools print.
#include <nlohmann/json.hpp>

#include "peft/core/json_io.h"
#include "peft/train/run_config.h"
#include "test_util.h"

namespace peft::test {
namespace {

TEST(RunConfig, TrainerSettingsOverTheirDefaults) {
  auto t = train::trainer_config_from_json({{"max_steps", 7}, {"lr", 0.5}, {"schedule", "cosine"}, {"progress", false}},
                                           "run.json trainer");
  EXPECT_EQ(t.max_steps, 7);
  EXPECT_DOUBLE_EQ(t.lr, 0.5);
  EXPECT_EQ(t.schedule, "cosine");
  EXPECT_FALSE(t.progress);
  const train::TrainerConfig defaults;
  EXPECT_EQ(t.batch_size, defaults.batch_size);
  EXPECT_DOUBLE_EQ(t.weight_decay, defaults.weight_decay);
  EXPECT_NE(error_of([] { train::trainer_config_from_json({{"nope", 1}}, "run.json trainer"); }).find("unknown key 'nope'"),
            std::string::npos);
  const auto wrong = error_of([] { train::trainer_config_from_json({{"lr", "fast"}}, "run.json trainer"); });
  EXPECT_NE(wrong.find("run.json trainer: key 'lr' has the wrong type"), std::string::npos) << wrong;
}

TEST(RunConfig, LoadOptionsAndOverrides) {
  nlohmann::json cfg = {{"task", "sequence_classification"}, {"num_labels", 3}, {"dtype", "bfloat16"}};
  train::apply_override(cfg, "trainer.lr=0.01", "run.json");
  train::apply_override(cfg, "method={\"peft_type\":\"LORA\"}", "run.json");
  train::apply_override(cfg, "output_dir=runs/x", "run.json");
  EXPECT_DOUBLE_EQ(cfg["trainer"]["lr"].get<double>(), 0.01);
  EXPECT_EQ(cfg["method"]["peft_type"], "LORA");
  EXPECT_EQ(cfg["output_dir"], "runs/x");
  auto load = train::load_options_from_json(cfg, "run.json");
  EXPECT_EQ(load.task, "sequence_classification");
  EXPECT_EQ(load.num_labels.value_or(0), 3);
  EXPECT_EQ(load.dtype.value_or(c10::kFloat), c10::kBFloat16);
  cfg["dtype"] = "float8";
  EXPECT_NE(error_of([&] { train::load_options_from_json(cfg, "run.json"); }).find("run.json: dtype: expected float32"),
            std::string::npos);
  EXPECT_NE(error_of([&] { train::apply_override(cfg, "novalue", "run.json"); }).find("expected key.path=value"),
            std::string::npos);
  EXPECT_NE(error_of([&] { train::apply_override(cfg, "task.x=1", "run.json"); }).find("'x' is not an object"),
            std::string::npos)
      << error_of([&] { train::apply_override(cfg, "task.x=1", "run.json"); });
}

TEST(RunConfig, DataKindsFromJson) {
  const std::string model = std::string(PEFT_SOURCE_DIR) + "/examples/models/tiny-gpt2-en";
  auto data = train::load_run_data({{"kind", "jsonl_classification"},
                                    {"train", std::string(PEFT_SOURCE_DIR) + "/examples/data/spam/train.jsonl"},
                                    {"max_length", 16}},
                                   model, "run.json", /*need_train=*/true);
  ASSERT_TRUE(data.train);
  EXPECT_FALSE(data.eval);
  EXPECT_EQ(data.num_labels.value_or(0), 2);
  EXPECT_EQ(data.train->batch({0, 1}).input_ids.size(1), 16);
  EXPECT_NE(error_of([&] { train::load_run_data({{"kind", "csv"}}, model, "run.json", false); })
                .find("data.kind must be jsonl_classification, text, seq2seq_jsonl, span_corruption or idx, found 'csv'"),
            std::string::npos);
  // Sequence-to-sequence kinds: a classification file's text / label as source / target, and
  // span corruption with its sentinels after the tokenizer's vocabulary, held out at the tail.
  auto seq = train::load_run_data({{"kind", "seq2seq_jsonl"},
                                   {"train", std::string(PEFT_SOURCE_DIR) + "/examples/data/brown/train.jsonl"},
                                   {"source_field", "text"}, {"target_field", "label"}, {"max_source_length", 12},
                                   {"validation_fraction", 0.1}},
                                  model, "run.json", true);
  ASSERT_TRUE(seq.train && seq.validation);
  EXPECT_LE(seq.train->batch({0, 1}).input_ids.size(1), 12);
  EXPECT_FALSE(seq.num_labels.has_value());
  auto spans = train::load_run_data({{"kind", "span_corruption"},
                                     {"train", std::string(PEFT_SOURCE_DIR) + "/examples/data/sotu/train.txt"},
                                     {"block_size", 32}, {"max_tokens", 3200}, {"sentinels", 8}, {"variants", 2}},
                                    model, "run.json", true);
  EXPECT_EQ(spans.train->size(), 200);
  EXPECT_EQ(spans.max_token_id.value_or(0), 4000 + 2 - 1);  // 32 tokens: 5 noise in 2 spans
  EXPECT_NE(error_of([&] {
              train::load_run_data({{"kind", "seq2seq_jsonl"}, {"train", "x.jsonl"}, {"source_feld", "text"}}, model,
                                   "run.json", true);
            }).find("source_feld"),
            std::string::npos);
  EXPECT_NE(error_of([&] { train::load_run_data({{"kind", "text"}}, model, "run.json", true); }).find("data.train is required"),
            std::string::npos);
}

}  // namespace
}  // namespace peft::test
