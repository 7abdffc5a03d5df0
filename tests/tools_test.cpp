// The training tools as real processes on the shipped tiny model: peft-train (with --set and
// --resume), peft-eval, peft-generate, peft-merge, peft-inspect on a delta.
#include <cstdlib>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/methods/method.h"
#include "peft/methods/s3pet/s3pet.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/tokenizers/tokenizer.h"
#include "peft/data/batch_source.h"
#include "peft/train/run_config.h"
#include "peft/train/training_adapter.h"
#include "peft/train/trainer.h"
#include "peft/core/safetensors.h"
#include "test_util.h"

#if defined(PEFT_TRAIN_BIN) && defined(PEFT_SOURCE_DIR)

namespace peft::test {
namespace {

/// A run config: LoRA r=4 with a new head on the bundled tiny GPT-2, bundled spam mails (train,
/// test as eval), `data` merged over those keys, `trainer` as given, output in dir/run.
nlohmann::json spam_lora_run(const TempDir& dir, const nlohmann::json& data, const nlohmann::json& trainer) {
  nlohmann::json d = {{"kind", "jsonl_classification"},
                      {"train", source("examples/data/spam/train.jsonl")},
                      {"eval", source("examples/data/spam/test.jsonl")}};
  d.update(data);
  return {{"model", source("examples/models/tiny-gpt2-en")},
          {"task", "sequence_classification"},
          {"method", {{"peft_type", "LORA"}, {"task_type", "SEQ_CLS"}, {"r", 4}, {"fan_in_fan_out", true}}},
          {"data", d},
          {"trainer", trainer},
          {"output_dir", dir.file("run")}};
}

TEST(Tools, TrainEvalMergeGenerateInspect) {
  TempDir dir;
  const std::string model = source("examples/models/tiny-gpt2-en");
  const auto cfg = spam_lora_run(
      dir, {{"max_length", 32}},
      {{"max_steps", 6}, {"batch_size", 4}, {"lr", 0.01}, {"eval_batches", 2}, {"log_every", 1}});
  core::write_json_file(dir.file("run.json"), cfg);
  const std::string train = PEFT_TRAIN_BIN;
  ASSERT_EQ(run(train + " --threads 1 --config " + dir.file("run.json") + " --set trainer.max_steps=3", dir.file("a.log")), 0)
      << slurp(dir.file("a.log"));
  EXPECT_NE(slurp(dir.file("a.log")).find("trainable params:"), std::string::npos);
  // Continue to step 6 from the saved state.
  ASSERT_EQ(run(train + " --threads 1 --config " + dir.file("run.json") + " --resume", dir.file("b.log")), 0)
      << slurp(dir.file("b.log"));
  auto log = slurp(dir.file("run/log.jsonl"));
  EXPECT_NE(log.find("\"step\": 6"), std::string::npos) << log;
  EXPECT_NE(log.find("\"accuracy\""), std::string::npos) << log;
  // A bad override is named.
  EXPECT_NE(run(train + " --config " + dir.file("run.json") + " --set trainer.nope=1", dir.file("c.log")), 0);
  EXPECT_NE(slurp(dir.file("c.log")).find("nope"), std::string::npos);

  ASSERT_EQ(run(std::string(PEFT_EVAL_BIN) + " --threads 1 --config " + dir.file("run.json") + " --set data.max_length=16 --adapter " +
                    dir.file("run/final") + " --out " + dir.file("eval.json"),
                dir.file("e.log")),
            0)
      << slurp(dir.file("e.log"));
  auto scores = nlohmann::json::parse(slurp(dir.file("eval.json")));
  EXPECT_EQ(scores["examples"], 400);
  {
    // peft-eval reports what the library computes for the same delta, data and settings.
    auto eval_cfg = cfg;
    eval_cfg["data"]["max_length"] = 16;
    auto parts = train::build_run(eval_cfg, "eval", /*need_train=*/false);
    PeftModel evaluated(parts.model);
    checkpoint::load_adapter(evaluated, dir.file("run/final"));
    evaluated.eval();
    auto ours = train::evaluate([&](const models::ModelInputs& in) { return evaluated.forward(in); }, *parts.eval,
                                parts.trainer.batch_size, 0, parts.trainer.device);
    EXPECT_EQ(scores["accuracy"].get<double>(), ours.accuracy);
    EXPECT_NEAR(scores["loss"].get<double>(), ours.loss, 1e-5);
    EXPECT_GT(ours.accuracy, 0.5) << "6 LoRA steps on spam beat chance";
  }

  ASSERT_EQ(run(std::string(PEFT_MERGE_BIN) + " --model " + model + " --adapter " + dir.file("run/final") +
                    " --task sequence_classification --num-labels 2 --out " + dir.file("merged"),
                dir.file("m.log")),
            0)
      << slurp(dir.file("m.log"));
  EXPECT_TRUE(std::filesystem::exists(dir.file("merged/tokenizer.json")));
  auto merged_cfg = core::read_json_file(dir.file("merged/config.json"));
  EXPECT_EQ(merged_cfg["architectures"][0], "GPT2ForSequenceClassification");

  ASSERT_EQ(run(std::string(PEFT_GENERATE_BIN) + " --threads 1 --model " + model +
                    " --prompt 'The whale' --max-new-tokens 8",
                dir.file("g.log")),
            0)
      << slurp(dir.file("g.log"));
  EXPECT_NE(slurp(dir.file("g.log")).find("The whale"), std::string::npos);

  ASSERT_EQ(run(std::string(PEFT_INSPECT_BIN) + " " + dir.file("run/final"), dir.file("i.log")), 0);
  auto inspect = slurp(dir.file("i.log"));
  EXPECT_NE(inspect.find("lora_A.weight"), std::string::npos) << inspect;
  EXPECT_NE(inspect.find("base_model.model.score.weight"), std::string::npos) << inspect;
}

TEST(Tools, TrainSelectsOnValidationAndScoresTheTestSetOnce) {
  // With data.validation_fraction, validation picks best/ and the test set scores only that delta:
  // the logged test score is what the library computes for best/ on the test set.
  TempDir dir;
  const auto cfg = spam_lora_run(dir, {{"validation_fraction", 0.05}, {"max_length", 16}},
                                 {{"max_steps", 6}, {"batch_size", 8}, {"lr", 0.02}, {"eval_every", 2}, {"log_every", 2}});
  core::write_json_file(dir.file("run.json"), cfg);
  ASSERT_EQ(run(std::string(PEFT_TRAIN_BIN) + " --threads 1 --config " + dir.file("run.json"), dir.file("a.log")), 0)
      << slurp(dir.file("a.log"));
  const auto out = slurp(dir.file("a.log"));
  EXPECT_NE(out.find("validation (selects best/): validation part of the training set: 80 of 1600 examples"),
            std::string::npos)
      << out;
  nlohmann::json test;
  int64_t evaluations = 0;
  std::ifstream log(dir.file("run/log.jsonl"));
  for (std::string line; std::getline(log, line);) {
    auto rec = nlohmann::json::parse(line);
    if (rec.contains("eval")) {
      ++evaluations;
      EXPECT_EQ(rec["eval"]["examples"], 80);
    }
    if (rec.contains("test")) test = rec;
  }
  EXPECT_EQ(evaluations, 3);
  ASSERT_TRUE(test.contains("selected_step")) << slurp(dir.file("run/log.jsonl"));
  EXPECT_EQ(test["test"]["examples"], 400);

  auto parts = train::build_run(cfg, "run.json", /*need_train=*/false);
  PeftModel chosen(parts.model);
  checkpoint::load_adapter(chosen, dir.file("run/best"));
  chosen.eval();
  auto ours = train::evaluate([&](const models::ModelInputs& in) { return chosen.forward(in); }, *parts.eval,
                              parts.trainer.batch_size, 0, parts.trainer.device);
  EXPECT_NEAR(test["test"]["accuracy"].get<double>(), ours.accuracy, 1e-6);
  EXPECT_NEAR(test["test"]["loss"].get<double>(), ours.loss, 1e-5);
}

TEST(Tools, TrainsABf16BaseWithCheckpointingAutocastAndFloat32Deltas) {
  TempDir dir;
  nlohmann::json cfg = {
      {"model", source("examples/models/tiny-gpt2-en")},
      {"task", "causal_lm"},
      {"dtype", "bfloat16"},
      {"gradient_checkpointing", true},
      {"method", {{"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"r", 4}, {"lora_dropout", 0.1}}},
      {"data", {{"kind", "text"}, {"train", source("examples/data/sotu/train.txt")},
                {"eval", source("examples/data/sotu/test.txt")}, {"block_size", 32}}},
      {"trainer", {{"max_steps", 3}, {"batch_size", 4}, {"eval_batches", 1}, {"mixed_precision", "bf16"}}},
      {"output_dir", dir.file("run")}};
  core::write_json_file(dir.file("run.json"), cfg);
  const std::string train = PEFT_TRAIN_BIN;
  ASSERT_EQ(run(train + " --threads 1 --config " + dir.file("run.json"), dir.file("a.log")), 0) << slurp(dir.file("a.log"));
  const safetensors::File delta(dir.file("run/final/adapter_model.safetensors"));
  for (const auto& t : delta.tensors()) EXPECT_EQ(t.dtype, safetensors::DType::F32) << t.name;
  auto parts = train::build_run(cfg, "run.json", /*need_train=*/false);
  EXPECT_TRUE(parts.model->gradient_checkpointing());
  for (const auto& p : parts.model->parameters()) EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
  cfg["delta_dtype"] = "bf15";
  EXPECT_NE(error_of([&] { train::build_run(cfg, "run.json", false); }).find("run.json: delta_dtype"), std::string::npos);
}

TEST(Tools, TrainsLoraOnAQuantizedBaseThenMergesIntoTheBf16Base) {
  TempDir dir;
  auto cfg = spam_lora_run(dir, {{"max_length", 32}}, {{"max_steps", 4}, {"batch_size", 4}, {"lr", 0.01}, {"eval_batches", 1}});
  cfg["quantization"] = {{"type", "nf4"}, {"double_quant", true}, {"compute_dtype", "float32"}};
  core::write_json_file(dir.file("run.json"), cfg);
  ASSERT_EQ(run(std::string(PEFT_TRAIN_BIN) + " --threads 1 --config " + dir.file("run.json"), dir.file("a.log")), 0)
      << slurp(dir.file("a.log"));
  EXPECT_NE(slurp(dir.file("a.log")).find("quantized: 16 linears, nf4 (double quant)"), std::string::npos)
      << slurp(dir.file("a.log"));
  const std::string model = source("examples/models/tiny-gpt2-en");
  ASSERT_EQ(run(std::string(PEFT_MERGE_BIN) + " --model " + model + " --adapter " + dir.file("run/final") +
                    " --task sequence_classification --num-labels 2 --dtype bfloat16 --out " + dir.file("merged"),
                dir.file("m.log")),
            0)
      << slurp(dir.file("m.log"));
  const safetensors::File merged_file(dir.file("merged/model.safetensors"));
  for (const auto& t : merged_file.tensors()) EXPECT_EQ(t.dtype, safetensors::DType::BF16) << t.name;
  // The merged bf16 model computes the bf16 base with the delta, unmerged.
  models::LoadOptions bf16;
  bf16.dtype = torch::kBFloat16;
  bf16.task = "sequence_classification";
  bf16.num_labels = 2;
  PeftModel with_delta(models::load_pretrained(model, bf16));
  checkpoint::load_adapter(with_delta, dir.file("run/final"));
  with_delta.eval();
  auto merged = models::load_pretrained(dir.file("merged"));
  merged->eval();
  models::ModelInputs in;
  in.input_ids = torch::tensor({{11, 40, 7, 300, 2}, {5, 6, 7, 8, 9}});
  in.attention_mask = torch::ones_like(in.input_ids);
  const at::Tensor a = with_delta.forward(in).logits.to(torch::kFloat), b = merged->forward(in).logits.to(torch::kFloat);
  EXPECT_LT(max_abs_diff(a, b), 0.05 * (1 + a.abs().max().item<double>()));
  EXPECT_NE(run(std::string(PEFT_MERGE_BIN) + " --model " + model + " --adapter " + dir.file("run/final") +
                    " --dtype float8 --out " + dir.file("bad"),
                dir.file("bad.log")),
            0);
  EXPECT_NE(slurp(dir.file("bad.log")).find("--dtype"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir.file("bad")));
}

/// Trains the spam run's LoRA through the library as peft-train does; returns the test accuracy of
/// the delta selected on validation.
double spam_test_accuracy(nlohmann::json cfg) {
  auto parts = train::build_run(cfg, "run.json", /*need_train=*/true);
  PeftModel model(parts.model);
  model.set_precision({parts.delta_dtype, parts.save_dtype});
  const data::DatasetBatches batches(parts.train, parts.trainer.batch_size, parts.trainer.device);
  train::add_training_adapter(model, "default", *methods::parse_config(cfg["method"]), batches, "", false);
  const auto sets = train::evaluation_sets(parts);
  auto result = train::Trainer(train::trainable_delta(model), parts.trainer, parts.train, sets.selection, sets.test).train();
  EXPECT_TRUE(result.test_eval.has_value());
  return result.test_eval ? result.test_eval->accuracy : 0.0;
}

TEST(Tools, LoraOnAnNf4BaseScoresAsTheFloat32BaseDoes) {
  // configs/train_spam_lora.json shortened to test size (mails cut to 32 tokens, 200 steps):
  // both bases see the same data, init and steps, compute in float32, and each delta is chosen
  // on validation and scored once on the 400 test mails. The full-length comparison (bf16
  // compute, 300 steps) is a measurement in the README, not a test.
  TempDir dir;
  auto cfg = spam_lora_run(dir, {{"max_length", 32}, {"validation_fraction", 0.1}},
                           {{"max_steps", 200}, {"batch_size", 16}, {"lr", 0.004}, {"schedule", "linear"},
                            {"warmup_steps", 10}, {"eval_every", 50}});
  cfg.erase("output_dir");
  cfg["method"]["r"] = 8;
  cfg["method"]["lora_alpha"] = 16;
  cfg["method"]["target_modules"] = {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"};
  auto nf4 = cfg;
  nf4["quantization"] = {{"type", "nf4"}, {"double_quant", true}, {"compute_dtype", "float32"}};
  const double wide = spam_test_accuracy(cfg), quantized = spam_test_accuracy(nf4);
  std::printf("spam test accuracy: float32 base %.4f, nf4 base %.4f\n", wide, quantized);
  EXPECT_GT(wide, 0.85) << "the float32 run learns the task";
  EXPECT_LE(std::abs(quantized - wide), 0.02) << "nf4 " << quantized << " vs float32 " << wide;
}

TEST(Tools, PromptMethodsTrainResumeAndGenerate) {
  // The reparameterization MLP trains and survives a resume (it is in the training state), the
  // delta holds only the prefix, and peft-generate runs it.
  TempDir dir;
  const std::string model = source("examples/models/tiny-gpt2-en");
  nlohmann::json cfg = {
      {"model", model},
      {"task", "causal_lm"},
      {"method", {{"peft_type", "PREFIX_TUNING"}, {"task_type", "CAUSAL_LM"}, {"num_virtual_tokens", 4},
                  {"prefix_projection", true}, {"encoder_hidden_size", 32}}},
      {"data", {{"kind", "text"}, {"train", source("examples/data/sotu/train.txt")},
                {"eval", source("examples/data/sotu/test.txt")}, {"block_size", 32}}},
      {"trainer", {{"max_steps", 6}, {"batch_size", 4}, {"lr", 0.01}, {"eval_batches", 2}, {"log_every", 1}}},
      {"output_dir", dir.file("run")}};
  core::write_json_file(dir.file("run.json"), cfg);
  const std::string train = PEFT_TRAIN_BIN;
  ASSERT_EQ(run(train + " --threads 1 --config " + dir.file("run.json") + " --set trainer.max_steps=3", dir.file("a.log")), 0)
      << slurp(dir.file("a.log"));
  auto state = safetensors::load_file(dir.file("run/state/params.safetensors"));
  EXPECT_TRUE(state.count("prompt_encoder.default.transform.0.weight")) << "the MLP is in the training state";
  ASSERT_EQ(run(train + " --threads 1 --config " + dir.file("run.json") + " --resume", dir.file("b.log")), 0)
      << slurp(dir.file("b.log"));
  EXPECT_NE(slurp(dir.file("run/log.jsonl")).find("\"step\": 6"), std::string::npos);
  auto delta = safetensors::load_file(dir.file("run/final/adapter_model.safetensors"));
  ASSERT_EQ(delta.size(), 1u);
  EXPECT_EQ(delta.at("prompt_embeddings").sizes(), c10::IntArrayRef({4, 2 * 4 * 128}));  // 4 layers, width 128
  ASSERT_EQ(run(std::string(PEFT_GENERATE_BIN) + " --threads 1 --model " + model + " --adapter " + dir.file("run/final") +
                    " --prompt 'Mr. Speaker' --max-new-tokens 6",
                dir.file("g.log")),
            0)
      << slurp(dir.file("g.log"));
  EXPECT_NE(slurp(dir.file("g.log")).find("Mr. Speaker"), std::string::npos);
  // Greedy text is the same with the key/value cache as recomputing the context.
  ASSERT_EQ(run(std::string(PEFT_GENERATE_BIN) + " --threads 1 --model " + model + " --adapter " + dir.file("run/final") +
                    " --prompt 'Mr. Speaker' --max-new-tokens 6 --no-cache",
                dir.file("h.log")),
            0)
      << slurp(dir.file("h.log"));
  EXPECT_EQ(slurp(dir.file("h.log")), slurp(dir.file("g.log")));
}

TEST(Tools, TrainRefusesAnEarlierRunUnlessResumedOrOverwritten) {
  TempDir dir;
  nlohmann::json cfg = {
      {"model", source("examples/models/tiny-gpt2-en")},
      {"task", "sequence_classification"},
      {"method", {{"peft_type", "LORA"}, {"task_type", "SEQ_CLS"}, {"r", 2}}},
      {"data", {{"kind", "jsonl_classification"}, {"train", source("examples/data/spam/train.jsonl")}, {"max_length", 16}}},
      {"trainer", {{"max_steps", 2}, {"batch_size", 2}, {"log_every", 1}}},
      {"output_dir", dir.file("run")}};
  core::write_json_file(dir.file("run.json"), cfg);
  const std::string train = std::string(PEFT_TRAIN_BIN) + " --threads 1 --config " + dir.file("run.json");
  ASSERT_EQ(run(train, dir.file("a.log")), 0) << slurp(dir.file("a.log"));
  const std::string first_delta = slurp(dir.file("run/final/adapter_model.safetensors"));
  // A second fresh run into the same directory is refused before anything is written.
  EXPECT_NE(run(train + " --set trainer.lr=0.5", dir.file("b.log")), 0);
  EXPECT_NE(slurp(dir.file("b.log")).find("holds an earlier run (state, final, log.jsonl)"), std::string::npos)
      << slurp(dir.file("b.log"));
  EXPECT_EQ(slurp(dir.file("run/final/adapter_model.safetensors")), first_delta) << "nothing was lost";
  EXPECT_EQ(core::read_json_file(dir.file("run/run_config.json"))["trainer"].value("lr", 0.0), 0.0)
      << "the earlier run's config is still the one on disk";
  // --overwrite replaces the earlier run: its log holds only the new run's steps.
  ASSERT_EQ(run(train + " --set trainer.lr=0.5 --overwrite", dir.file("c.log")), 0) << slurp(dir.file("c.log"));
  EXPECT_NE(slurp(dir.file("run/final/adapter_model.safetensors")), first_delta);
  std::ifstream log(dir.file("run/log.jsonl"));
  int steps = 0;
  for (std::string l; std::getline(log, l);) steps += l.find("\"loss\"") != std::string::npos;
  EXPECT_EQ(steps, 2);
  // So does trainer.overwrite in the config; --resume continues as before.
  EXPECT_EQ(run(train + " --set trainer.overwrite=true", dir.file("d.log")), 0) << slurp(dir.file("d.log"));
  EXPECT_EQ(run(train + " --set trainer.max_steps=3 --resume", dir.file("e.log")), 0) << slurp(dir.file("e.log"));
}

TEST(Tools, GenerateWithEveryPromptMethodEqualsInProcessGreedy) {
  const std::string model_dir = source("examples/models/tiny-gpt2-en");
  auto tok = tokenizers::load_tokenizer(model_dir);
  const std::string prompt = "Mr. Speaker, the state of our Union";
  const std::vector<nlohmann::json> configs = {
      {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 5}, {"prefix_projection", true}},
      {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 5}, {"prompt_tuning_init", "SAMPLE_VOCAB"}},
      {{"peft_type", "P_TUNING"}, {"num_virtual_tokens", 5}},
      {{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 4}, {"adapter_layers", 2}}};
  for (const auto& cfg : configs) {
    TempDir dir;
    PeftModel model(models::load_pretrained(model_dir));
    model.add_adapter("default", *methods::parse_config(cfg));
    torch::NoGradGuard g;
    for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * 0.05);
    model.eval();
    checkpoint::save_adapter(model, dir.file("delta"));
    std::vector<int64_t> ids = tok->encode(prompt);
    const size_t start = ids.size();
    for (int i = 0; i < 6; ++i) {
      models::ModelInputs in;
      in.input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0);
      ids.push_back(model.forward(in).logits[0][-1].argmax().item<int64_t>());
    }
    ASSERT_EQ(run(std::string(PEFT_GENERATE_BIN) + " --threads 1 --model " + model_dir + " --adapter " +
                      dir.file("delta") + " --prompt '" + prompt + "' --max-new-tokens 6",
                  dir.file("g.log")),
              0)
        << slurp(dir.file("g.log"));
    const std::string all = tok->decode(ids), before = tok->decode(std::vector<int64_t>(ids.begin(), ids.begin() + start));
    EXPECT_NE(slurp(dir.file("g.log")).find(prompt + all.substr(before.size())), std::string::npos)
        << cfg.dump() << "\n" << slurp(dir.file("g.log")) << "\nexpected continuation: " << all.substr(before.size());
  }
}

/// The greedy continuation text of `prompt` under `adapter` ("" = the bare base), in process.
std::string greedy_text(PeftModel& model, tokenizers::Tokenizer& tok, const std::string& prompt, const std::string& adapter,
                        int tokens) {
  if (adapter.empty()) {
    model.disable_adapters();
  } else {
    model.enable_adapters();
    model.set_adapter(adapter);
  }
  std::vector<int64_t> ids = tok.encode(prompt);
  const std::string before = tok.decode(ids);
  torch::NoGradGuard g;
  for (int i = 0; i < tokens; ++i) {
    models::ModelInputs in;
    in.input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0);
    ids.push_back(model.forward(in).logits[0][-1].argmax().item<int64_t>());
  }
  return prompt + tok.decode(ids).substr(before.size());
}

TEST(Tools, GenerateMixesAdaptersPerPromptAndMergeCombinesDeltas) {
  const std::string model_dir = source("examples/models/tiny-gpt2-en");
  auto tok = tokenizers::load_tokenizer(model_dir);
  TempDir dir;
  PeftModel model(models::load_pretrained(model_dir));
  model.eval();
  const nlohmann::json lora = {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"fan_in_fan_out", true},
                               {"target_modules", {"c_attn", "c_fc"}}};
  torch::manual_seed(3);
  for (const char* name : {"x", "y"}) {
    model.add_adapter(name, *methods::parse_config(lora));
    model.set_adapter(name);
    torch::NoGradGuard g;
    for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * 0.3);
    checkpoint::save_adapter(model, dir.file(name), name);
  }
  const std::vector<std::string> prompts = {"The whale", "Mr. Speaker, the state", "It was"};
  const std::vector<std::string> names = {"y", "__base__", "x"};
  const std::string gen = std::string(PEFT_GENERATE_BIN) + " --threads 1 --model " + model_dir + " --adapter x=" +
                          dir.file("x") + " --adapter y=" + dir.file("y") + " --max-new-tokens 6";
  ASSERT_EQ(run(gen + " --prompt '" + prompts[0] + "' --prompt '" + prompts[1] + "' --prompt '" + prompts[2] +
                    "' --adapter-per-prompt y,__base__,x",
                dir.file("g.log")),
            0)
      << slurp(dir.file("g.log"));
  const std::string out = slurp(dir.file("g.log"));
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string expected = greedy_text(model, *tok, prompts[i], names[i] == "__base__" ? "" : names[i], 6);
    EXPECT_NE(out.find(expected), std::string::npos) << out << "\nexpected: " << expected;
  }
  EXPECT_NE(greedy_text(model, *tok, prompts[0], "y", 6), greedy_text(model, *tok, prompts[0], "", 6))
      << "the deltas change the continuation (else the test would prove nothing)";
  EXPECT_NE(run(gen + " --prompt a --prompt b --adapter-per-prompt x", dir.file("bad.log")), 0);
  EXPECT_NE(slurp(dir.file("bad.log")).find("--adapter-per-prompt"), std::string::npos) << slurp(dir.file("bad.log"));

  // peft-merge --combine --delta-only writes the same delta add_weighted_adapter makes in process.
  const std::string merge = std::string(PEFT_MERGE_BIN) + " --model " + model_dir + " --adapter x=" + dir.file("x") +
                            " --adapter y=" + dir.file("y");
  ASSERT_EQ(run(merge + " --combine ties --weights 0.6,0.4 --density 0.5 --delta-only --out " + dir.file("ties"),
                dir.file("m.log")),
            0)
      << slurp(dir.file("m.log"));
  methods::WeightedCombination how;
  how.combination_type = "ties";
  how.density = 0.5;
  model.enable_adapters();
  model.add_weighted_adapter({"x", "y"}, {0.6, 0.4}, "ties", how);
  PeftModel loaded(models::load_pretrained(model_dir));
  checkpoint::load_adapter(loaded, dir.file("ties"));
  const auto theirs = loaded.adapter_state_dict("default");
  const auto ours = model.adapter_state_dict("ties");
  ASSERT_EQ(theirs.size(), ours.size());
  for (const auto& [k, t] : ours) EXPECT_TRUE(bit_equal(theirs.at(k), t)) << k;
  // Without --delta-only: the merged model, which runs as base + combined delta.
  ASSERT_EQ(run(merge + " --combine linear --weights 1,1 --out " + dir.file("merged"), dir.file("m2.log")), 0)
      << slurp(dir.file("m2.log"));
  auto merged = models::load_pretrained(dir.file("merged"));
  merged->eval();
  model.add_weighted_adapter({"x", "y"}, {1, 1}, "lin", methods::WeightedCombination{"linear"});
  model.set_adapter("lin");
  models::ModelInputs in;
  in.input_ids = torch::tensor(tok->encode(prompts[1]), torch::kLong).unsqueeze(0);
  torch::NoGradGuard g;
  EXPECT_LT(max_abs_diff(merged->forward(in).logits, model.forward(in).logits), 1e-4);
  EXPECT_NE(run(merge + " --out " + dir.file("two"), dir.file("m3.log")), 0);
  EXPECT_NE(slurp(dir.file("m3.log")).find("--combine"), std::string::npos) << slurp(dir.file("m3.log"));
}

TEST(Tools, BenchReportsEveryMethodInItsOwnProcess) {
  TempDir dir;
  ASSERT_EQ(run(std::string(PEFT_BENCH_BIN) + " --threads 1 --layers 2 --hidden 32 --heads 4 --vocab 100 --seq 16"
                    " --batch 2 --steps 2 --warmup 1 --gemm --dp --methods full,lora,lst --json " + dir.file("b.jsonl") +
                    " --profile " + dir.path(),
                dir.file("b.log")),
            0)
      << slurp(dir.file("b.log"));
  std::ifstream in(dir.file("b.jsonl"));
  std::map<std::string, nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    rows[j.value("method", "gemm")] = j;
  }
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_GT(rows["gemm"]["gemm_gflops"].get<double>(), 0.0);
  for (const char* m : {"full", "lora", "lst"}) {
    EXPECT_GT(rows[m]["step_ms"].get<double>(), 0.0) << m;
    EXPECT_GT(rows[m]["memory_mib"].get<double>(), 0.0) << m;
    EXPECT_GT(rows[m]["inference"]["with_delta_ms"].get<double>(), 0.0) << m;
    EXPECT_GT(rows[m]["dp"]["dp_step_ms"].get<double>(), 0.0) << m << ": --dp times a DP-SGD step too";
  }
  EXPECT_EQ(rows["full"]["trainable_params"], rows["full"]["total_params"]);
  // Forward FLOPs: 2 layers x (24 N d^2 + 4 N T d) + 2 N d V with N = 32 tokens, T = 16, d = 32, V = 100;
  // a step is 3x that with every weight training, 2x on a frozen base; none claimed for LST.
  const double forward = 2 * (24.0 * 32 * 32 * 32 + 4.0 * 32 * 16 * 32) + 2.0 * 32 * 32 * 100;
  EXPECT_NEAR(rows["full"]["step_gflop"].get<double>(), 3 * forward / 1e9, 1e-12);
  EXPECT_NEAR(rows["lora"]["step_gflop"].get<double>(), 2 * forward / 1e9, 1e-12);
  EXPECT_TRUE(rows["lst"]["step_gflop"].is_null());
  // A training step cannot outrun the machine's GEMM rate: a fraction above 1 is a counting error.
  for (const char* m : {"full", "lora"}) {
    EXPECT_GT(rows[m]["gemm_fraction"].get<double>(), 0.0) << m;
    EXPECT_LT(rows[m]["gemm_fraction"].get<double>(), 1.0) << m;
  }
  for (const char* m : {"full", "lora", "lst"}) {  // --profile: the timed steps' operators, per method
    const std::string trace = slurp(dir.file(std::string(m) + ".trace.json"));
    EXPECT_NE(trace.find("aten::"), std::string::npos) << m;
  }
  EXPECT_NE(slurp(dir.file("b.log")).find("threads: 1 (as asked"), std::string::npos) << slurp(dir.file("b.log"));
  EXPECT_LT(rows["lora"]["saved_bytes"].get<int64_t>() * 10, rows["full"]["saved_bytes"].get<int64_t>());
  EXPECT_TRUE(rows["lora"]["inference"]["merged_ms"].is_number());
  EXPECT_TRUE(rows["lst"]["inference"]["merged_ms"].is_null()) << "a side network cannot be merged";
  EXPECT_NE(run(std::string(PEFT_BENCH_BIN) + " --methods lora,nonsense", dir.file("e.log")), 0);
  EXPECT_NE(slurp(dir.file("e.log")).find("unknown method 'nonsense'"), std::string::npos) << slurp(dir.file("e.log"));
}

TEST(Tools, S3petSearchesWritesTheStructureAndRetrainsIt) {
  TempDir dir;
  const std::string train = PEFT_TRAIN_BIN;
  const std::string common = " --threads 1 --config " + source("configs/sotu_s3pet.json") + " --set model=" +
                             source("examples/models/tiny-gpt2-en") + " --set data.train=" +
                             source("examples/data/sotu/train.txt") + " --set data.eval=" +
                             source("examples/data/sotu/test.txt") +
                             " --set data.block_size=32 --set trainer.batch_size=4 --set trainer.eval_every=0"
                             " --set trainer.eval_batches=2 --set trainer.max_steps=3 --set trainer.warmup_steps=0 --set output_dir=" + dir.file("run");
  ASSERT_EQ(run(train + common + " --set method.search.steps=4", dir.file("a.log")), 0) << slurp(dir.file("a.log"));
  auto structure = core::read_json_file(dir.file("run/structure.json"));
  ASSERT_FALSE(structure["structure"].empty());
  int64_t used = 0;
  for (const auto& m : structure["structure"]) used += m["params"].get<int64_t>();
  PeftModel model(models::load_pretrained(source("examples/models/tiny-gpt2-en")));
  auto cfg = std::dynamic_pointer_cast<methods::S3petConfig>(methods::parse_config(structure));
  EXPECT_LE(used, methods::s3pet_budget(model, *cfg));
  EXPECT_GT(used, methods::s3pet_budget(model, *cfg) / 2);
  // The delta holds exactly the structure's modules, and loads onto the base.
  auto delta = safetensors::load_file(dir.file("run/final/adapter_model.safetensors"));
  int64_t saved = 0;
  for (const auto& [k, t] : delta) saved += t.numel();
  EXPECT_EQ(saved, used);
  checkpoint::load_adapter(model, dir.file("run/final"));
  EXPECT_EQ(model.adapter_config("default").to_json()["structure"], structure["structure"]);
  // --resume trains the structure on file (no new search).
  ASSERT_EQ(run(train + common + " --set trainer.max_steps=5 --resume", dir.file("b.log")), 0) << slurp(dir.file("b.log"));
  EXPECT_EQ(slurp(dir.file("b.log")).find("s3pet search step"), std::string::npos);
  // A random structure of the same budget comes from the same config.
  ASSERT_EQ(run(train + common + " --set method.search.strategy=random --set output_dir=" + dir.file("random"),
                dir.file("c.log")),
            0)
      << slurp(dir.file("c.log"));
  EXPECT_NE(core::read_json_file(dir.file("random/structure.json"))["structure"], structure["structure"]);
}

TEST(Tools, DseePruneRunsBothStagesAndWritesTheSparseModel) {
  TempDir dir;
  ASSERT_EQ(run(std::string(PEFT_DSEE_PRUNE_BIN) + " --threads 1 --config " + source("configs/vit_fashion_dsee.json") +
                    " --set model=" + source("examples/models/tiny-vit-mnist") +
                    " --set data.train_images=" + source("examples/data/fashion-mnist/train-images-idx3-ubyte") +
                    " --set data.train_labels=" + source("examples/data/fashion-mnist/train-labels-idx1-ubyte") +
                    " --set data.eval_images=" + source("examples/data/fashion-mnist/test-images-idx3-ubyte") +
                    " --set data.eval_labels=" + source("examples/data/fashion-mnist/test-labels-idx1-ubyte") +
                    " --set trainer.max_steps=3 --set trainer.eval_every=0 --retune-steps 2 --pruning-ratio 0.4"
                    " --heads 1 --out " + dir.file("run"),
                dir.file("p.log")),
            0)
      << slurp(dir.file("p.log"));
  auto report = core::read_json_file(dir.file("run/report.json"));
  EXPECT_GE(report["pruning"]["sparsity"].get<double>(), 0.4);
  EXPECT_EQ(report["pruning"]["heads_pruned"], 4);
  for (const char* stage : {"base", "stage1", "pruned", "retuned"}) EXPECT_TRUE(report[stage].contains("accuracy")) << stage;
  // The merged model is a plain model directory whose block projections carry the zeros.
  auto merged = models::load_pretrained(dir.file("run/merged"));
  int64_t zeros = 0, total = 0;
  for (auto& [name, lin] : merged->adaptable_linears())
    if (name.find(".layer.") != std::string::npos) {
      zeros += (lin->weight == 0).sum().item<int64_t>();
      total += lin->weight.numel();
    }
  EXPECT_GE(static_cast<double>(zeros) / static_cast<double>(total), 0.4);
}

}  // namespace
}  // namespace peft::test

#endif
