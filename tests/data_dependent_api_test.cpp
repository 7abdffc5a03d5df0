// A data-dependent method attached through the public API — PeftModel::add_adapter with a batch
// source — builds, bit for bit, the delta peft-train builds from the same config and seed:
// SparseAdapter's SNIP / GraSP scores, LST's Fisher-pruned side network, S3PET's structure
// search. Both sides train one step with the same trainer settings, so a different
// initialisation shows up as a different saved delta.
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"
#include "peft/data/batch_source.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/train/run_config.h"
#include "peft/tokenizers/tokenizer.h"
#include "peft/train/trainer.h"
#include "test_util.h"

#if defined(PEFT_TRAIN_BIN) && defined(PEFT_SOURCE_DIR)

namespace peft::test {
namespace {

/// A one-step spam run of `method` on the bundled tiny GPT-2.
nlohmann::json run_config(const nlohmann::json& method, const std::string& out) {
  return {{"model", source("examples/models/tiny-gpt2-en")},
          {"task", "sequence_classification"},
          {"seed", 7},
          {"method", method},
          {"data",
           {{"kind", "jsonl_classification"}, {"train", source("examples/data/spam/train.jsonl")}, {"max_length", 24}}},
          {"trainer", {{"max_steps", 1}, {"batch_size", 4}, {"lr", 0.001}, {"log_every", 1}, {"progress", false}}},
          {"output_dir", out}};
}

/// What an application does: the run's parts from the library, the method through add_adapter
/// with the training set as its batch source, one step of the library's trainer.
void train_through_api(const nlohmann::json& config, const std::string& out_dir) {
  auto parts = train::build_run(config, "api", /*need_train=*/true);
  PeftModel model(parts.model);
  data::DatasetBatches batches(parts.train, parts.trainer.batch_size, parts.trainer.device);
  model.add_adapter("default", *methods::parse_config(config["method"]), batches);
  parts.trainer.output_dir = out_dir;
  train::Trainer trainer(train::trainable_delta(model), parts.trainer, parts.train, parts.eval);
  trainer.train();
}

void expect_same_delta(const std::string& cli_dir, const std::string& api_dir) {
  auto cli = safetensors::load_file(cli_dir + "/adapter_model.safetensors");
  auto api = safetensors::load_file(api_dir + "/adapter_model.safetensors");
  ASSERT_EQ(cli.size(), api.size());
  for (const auto& [key, t] : cli) {
    ASSERT_TRUE(api.count(key)) << key;
    EXPECT_TRUE(bit_equal(t, api.at(key))) << key << ": max |diff| " << max_abs_diff(t, api.at(key));
  }
  EXPECT_EQ(core::read_json_file(cli_dir + "/adapter_config.json"), core::read_json_file(api_dir + "/adapter_config.json"));
}

void expect_cli_equals_api(const nlohmann::json& method) {
  TempDir dir;
  core::write_json_file(dir.file("run.json"), run_config(method, dir.file("cli")));
  const std::string cmd = std::string(PEFT_TRAIN_BIN) + " --threads 1 --config " + dir.file("run.json") + " > " +
                          dir.file("cli.log") + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(dir.file("cli.log"));
  const int threads = torch::get_num_threads();
  torch::set_num_threads(1);
  train_through_api(run_config(method, dir.file("api")), dir.file("api"));
  torch::set_num_threads(threads);
  expect_same_delta(dir.file("cli/final"), dir.file("api/final"));
}

TEST(DataDependentApi, SparseAdapterSnipEqualsPeftTrain) {
  expect_cli_equals_api({{"peft_type", "SPARSE_ADAPTER"}, {"task_type", "SEQ_CLS"}, {"score", "snip"},
                         {"adapter", {{"preset", "pfeiffer"}, {"bottleneck_size", 8}, {"init_weights", "houlsby"}}}});
}

TEST(DataDependentApi, SparseAdapterGraspEqualsPeftTrain) {
  expect_cli_equals_api({{"peft_type", "SPARSE_ADAPTER"}, {"task_type", "SEQ_CLS"}, {"score", "grasp"},
                         {"scope", "local"},
                         {"adapter", {{"preset", "pfeiffer"}, {"bottleneck_size", 8}, {"init_weights", "houlsby"}}}});
}

TEST(DataDependentApi, LstFisherEqualsPeftTrain) {
  expect_cli_equals_api({{"peft_type", "LST"}, {"task_type", "SEQ_CLS"}, {"reduction_factor", 4},
                         {"side_init", "fisher"}, {"fisher_batches", 2}});
}

TEST(DataDependentApi, S3petSearchEqualsPeftTrain) {
  const nlohmann::json method = {{"peft_type", "S3PET"}, {"task_type", "SEQ_CLS"}, {"budget", 0.01},
                                 {"search", {{"steps", 3}, {"seed", 5}}}};
  expect_cli_equals_api(method);
}

TEST(DataDependentApi, AttachingWithoutDataIsRefusedByName) {
  PeftModel model(models::load_pretrained(source("examples/models/tiny-gpt2-en")));
  auto snip = methods::parse_config({{"peft_type", "SPARSE_ADAPTER"}, {"score", "snip"}});
  EXPECT_NE(error_of([&] { model.add_adapter("a", *snip); }).find("needs training batches"), std::string::npos)
      << error_of([&] { model.add_adapter("a", *snip); });
  EXPECT_FALSE(model.has_adapter("a"));
  auto fisher = methods::parse_config({{"peft_type", "LST"}, {"side_init", "fisher"}});
  EXPECT_NE(error_of([&] { model.add_adapter("b", *fisher); }).find("side_init"), std::string::npos);
  // Scores that need no data attach as before.
  model.add_adapter("c", *methods::parse_config({{"peft_type", "SPARSE_ADAPTER"}, {"score", "mag"}}));
  EXPECT_TRUE(model.has_adapter("c"));
}

TEST(DataDependentApi, S3petSearchThroughTheApiAttachesTheFoundStructure) {
  auto base = models::load_pretrained(source("examples/models/tiny-gpt2-en"));
  PeftModel model(base);
  auto tok = tokenizers::load_tokenizer(source("examples/models/tiny-gpt2-en"));
  std::vector<models::ModelInputs> batches;
  for (const char* text : {"the ship sailed", "a whale was seen", "the sea was calm", "call me ishmael"}) {
    auto ids = tok->encode(text);
    models::ModelInputs in;
    in.input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0);
    in.labels = in.input_ids.clone();
    batches.push_back(in);
  }
  auto cfg = methods::parse_config({{"peft_type", "S3PET"}, {"budget", 0.01}, {"search", {{"steps", 2}}}});
  model.add_adapter("default", *cfg, data::FixedBatches(batches));
  const auto attached = model.adapter_config("default").to_json();
  ASSERT_FALSE(attached["structure"].empty());
  EXPECT_EQ(model.adapters(), std::vector<std::string>{"default"}) << "the search adapter is gone";
  // The found structure starts as the base.
  torch::NoGradGuard g;
  auto with = model.forward(batches[0]).logits;
  model.disable_adapters();
  EXPECT_TRUE(bit_equal(with, model.forward(batches[0]).logits));
}

}  // namespace
}  // namespace peft::test

#endif
