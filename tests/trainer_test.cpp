// The optimizer against torch and HF PEFT, schedules, and the trainer's guarantees: exact
// resume after SIGINT, reproducible runs, non-finite losses skipped then fatal, early
// stopping with the best delta kept.
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>

#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/safetensors.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/data/batch_source.h"
#include "peft/optim/adamw.h"
#include "peft/optim/schedule.h"
#include "peft/train/trainer.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

TEST(AdamW, MatchesTorchWithDecayOnlyOnMatrices) {
  torch::manual_seed(0);
  auto w = torch::randn({4, 3}).requires_grad_(true), b = torch::randn({3}).requires_grad_(true);
  auto w2 = w.detach().clone().requires_grad_(true), b2 = b.detach().clone().requires_grad_(true);
  optim::AdamWOptions o;
  o.weight_decay = 0.1;
  optim::AdamW ours({{"w", w}, {"b", b}}, o);
  torch::optim::AdamW decay({w2}, torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  torch::optim::AdamW none({b2}, torch::optim::AdamWOptions(1e-2).weight_decay(0.0));
  for (int step = 0; step < 4; ++step) {
    auto x = torch::randn({5, 4});
    ours.zero_grad();
    decay.zero_grad();
    none.zero_grad();
    (torch::tanh(x.matmul(w) + b)).pow(2).sum().backward();
    (torch::tanh(x.matmul(w2) + b2)).pow(2).sum().backward();
    ours.step(1e-2);
    decay.step();
    none.step();
  }
  EXPECT_LT(max_abs_diff(w, w2), 1e-6);
  EXPECT_LT(max_abs_diff(b, b2), 1e-6);
  EXPECT_EQ(ours.steps(), 4);
}

TEST(AdamW, OneStepMatchesPeftTrainingGolden) {
  PeftModel model(models::load_pretrained(fixture("hf/models/gpt2")));
  checkpoint::LoadOptions lo;
  lo.is_trainable = true;
  checkpoint::load_adapter(model, fixture("hf/adapters/gpt2_lora/adapter"), "default", lo);
  model.eval();
  auto target = train::trainable_delta(model);
  optim::AdamWOptions o;
  o.weight_decay = 0.0;
  optim::AdamW opt(target.parameters(), o);
  auto batch = fixture_inputs("hf/training/gpt2_lora_step/batch.safetensors", false);
  model.forward(batch).loss.backward();
  opt.step(1e-3);
  auto after = safetensors::load_file(fixture("hf/training/gpt2_lora_step/lora_after_adamw.safetensors"));
  auto state = model.adapter_state_dict("default");
  for (auto& [k, t] : after) EXPECT_LT(max_abs_diff(state.at(k), t), 1e-5) << k;
}

TEST(Schedule, WarmupThenLinearOrCosine) {
  EXPECT_DOUBLE_EQ(optim::schedule_factor("linear", 0, 4, 104), 0.25);
  EXPECT_DOUBLE_EQ(optim::schedule_factor("linear", 3, 4, 104), 1.0);
  EXPECT_DOUBLE_EQ(optim::schedule_factor("linear", 54, 4, 104), 0.5);
  EXPECT_NEAR(optim::schedule_factor("cosine", 54, 4, 104), 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(optim::schedule_factor("constant", 90, 4, 104), 1.0);
  EXPECT_THROW(optim::schedule_factor("step", 1, 0, 10), Error);
}

/// Deterministic random blocks for the tiny GPT-2 (vocabulary 61).
struct LoraRun {
  std::shared_ptr<PeftModel> model;
  train::Trainable target;
};

LoraRun lora_run() {
  auto model = std::make_shared<PeftModel>(tiny_model("gpt2"));
  model->add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"r", 4}, {"lora_dropout", 0.2}}));
  return {model, train::trainable_delta(*model)};
}

train::TrainerConfig small_config(const std::string& out = "") {
  train::TrainerConfig c;
  c.max_steps = 12;
  c.batch_size = 4;
  c.grad_accum = 2;
  c.lr = 5e-3;
  c.warmup_steps = 2;
  c.schedule = "cosine";
  c.output_dir = out;
  c.progress = false;
  return c;
}

TEST(Trainer, ResumeAfterSigintContinuesExactlyAsAnUninterruptedRun) {
  auto data = random_blocks(10);
  auto a = lora_run();
  auto straight = train::Trainer(a.target, small_config(), data).train();
  ASSERT_EQ(straight.losses.size(), 12u);
  EXPECT_LT(straight.losses.back(), straight.losses.front());

  TempDir dir;
  auto b = lora_run();
  int calls = 0;
  auto interrupting = b.target;
  interrupting.forward = [&](const models::ModelInputs& in) {
    if (++calls == 2 * 7) std::raise(SIGINT);  // during step 7
    return b.target.forward(in);
  };
  auto first = train::Trainer(interrupting, small_config(dir.path()), data).train();
  EXPECT_TRUE(first.interrupted);
  ASSERT_EQ(first.losses.size(), 7u);
  ASSERT_TRUE(std::filesystem::exists(dir.file("state/trainer_state.json")));

  auto c = lora_run();  // a fresh process would start like this
  train::Trainer resumed(c.target, small_config(dir.path()), data);
  resumed.resume(dir.file("state"));
  EXPECT_EQ(resumed.step(), 7);
  auto second = resumed.train();
  ASSERT_EQ(second.losses.size(), 5u);
  std::vector<double> joined = first.losses;
  joined.insert(joined.end(), second.losses.begin(), second.losses.end());
  EXPECT_EQ(joined, straight.losses) << "bit-identical loss curve";
  auto pa = a.model->adapter_state_dict("default"), pc = c.model->adapter_state_dict("default");
  for (auto& [k, t] : pa) EXPECT_TRUE(bit_equal(t, pc.at(k))) << k;
  EXPECT_TRUE(std::filesystem::exists(dir.file("final/adapter_model.safetensors")));
  std::ifstream log(dir.file("log.jsonl"));
  int lines = 0, step_lines = 0;
  for (std::string l; std::getline(log, l);) {
    ++lines;
    auto j = nlohmann::json::parse(l);
    if (j.contains("loss")) {  // a logged step: the mean time of the steps since the last one
      ++step_lines;
      EXPECT_GT(j.at("step_ms").get<double>(), 0.0) << l;
      EXPECT_LE(j.at("step_ms").get<double>(), 1000.0 * j.at("elapsed_s").get<double>() + 1.0) << l;
    }
  }
  EXPECT_GE(lines, 2);
  EXPECT_GE(step_lines, 1);
}

TEST(Trainer, ResumeRestoresTheDeltasBuffers) {
  // Method state in buffers must come back from the training state, not be re-derived: SparseAdapter's
  // SNIP masks (a resumed process attaches without data: dense masks) and DSEE's random sparse
  // support (drawn again, here from another generator state).
  auto data = random_blocks(10);
  const std::vector<nlohmann::json> configs = {
      {{"peft_type", "SPARSE_ADAPTER"}, {"score", "snip"}, {"pruned_fraction", 0.5},
       {"adapter", {{"preset", "pfeiffer"}, {"bottleneck_size", 8}, {"init_weights", "houlsby"}}}},
      {{"peft_type", "DSEE"}, {"r", 2}, {"num_sparse", 16}, {"sparse_init", "random"}, {"target_modules", {"c_attn"}}}};
  for (const auto& json : configs) {
    const auto cfg = methods::parse_config(json);
    auto make = [&](bool resumed_process) {
      auto model = std::make_shared<PeftModel>(tiny_model("gpt2"));
      if (resumed_process) {
        torch::manual_seed(99);
        model->add_adapter_without_data("default", *cfg);
      } else {
        model->add_adapter("default", *cfg, data::DatasetBatches(data, 4));
      }
      return LoraRun{model, train::trainable_delta(*model)};
    };
    auto a = make(false);
    auto straight = train::Trainer(a.target, small_config(), data).train();

    TempDir dir;
    auto b = make(false);
    int calls = 0;
    auto interrupting = b.target;
    interrupting.forward = [&](const models::ModelInputs& in) {
      if (++calls == 2 * 6) std::raise(SIGINT);  // during step 6: the state is saved after it
      return b.target.forward(in);
    };
    auto first = train::Trainer(interrupting, small_config(dir.path()), data).train();
    ASSERT_TRUE(first.interrupted);
    ASSERT_TRUE(std::filesystem::exists(dir.file("state/buffers.safetensors"))) << json.dump();

    auto c = make(true);
    train::Trainer resumed(c.target, small_config(dir.path()), data);
    resumed.resume(dir.file("state"));
    auto second = resumed.train();
    ASSERT_EQ(first.losses.size() + second.losses.size(), 12u);
    std::vector<double> joined = first.losses;
    joined.insert(joined.end(), second.losses.begin(), second.losses.end());
    EXPECT_EQ(joined, straight.losses) << json.dump();
    auto pa = a.model->adapter_state_dict("default"), pc = c.model->adapter_state_dict("default");
    for (auto& [k, t] : pa) EXPECT_TRUE(bit_equal(t, pc.at(k))) << json["peft_type"] << " " << k;
    EXPECT_FALSE(c.model->adapter_buffers().empty());
  }
}

TEST(Trainer, ANewRunDoesNotReplaceAnEarlierOneUnlessAsked) {
  auto data = random_blocks(10);
  TempDir dir;
  auto config = small_config(dir.path());
  config.max_steps = 2;
  config.warmup_steps = 0;
  auto a = lora_run();
  train::Trainer(a.target, config, data).train();
  ASSERT_TRUE(std::filesystem::exists(dir.file("final")));
  auto b = lora_run();
  const auto e = error_of([&] { train::Trainer(b.target, config, data).train(); });
  EXPECT_NE(e.find("holds an earlier run (state, final, log.jsonl)"), std::string::npos) << e;
  config.overwrite = true;
  EXPECT_EQ(train::Trainer(b.target, config, data).train().losses.size(), 2u);
}

TEST(Trainer, WeightDecayFollowsTheParameterRole) {
  PeftModel roles(tiny_model("llama"));
  roles.add_adapter("ia3", *methods::parse_config({{"peft_type", "IA3"}}));
  roles.add_adapter("gate", *methods::parse_config({{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 2}, {"adapter_layers", 1}}));
  roles.add_adapter("prompt", *methods::parse_config({{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 2}}));
  roles.add_adapter("lora", *methods::parse_config({{"peft_type", "LORA"}, {"r", 2}}));
  std::map<std::string, int> seen;
  for (const auto& p : roles.base_model().named_parameters()) {
    const std::string role = roles.parameter_role(p.key(), p.value());
    if (p.key().find("ia3_l") != std::string::npos) EXPECT_EQ(role, "scale") << p.key();
    if (p.key().find("adaption_gate") != std::string::npos) EXPECT_EQ(role, "gate") << p.key();
    if (p.key().find("adaption_prompt") != std::string::npos || p.key().find("prompt_encoder") != std::string::npos)
      EXPECT_EQ(role, "prompt") << p.key();
    if (p.key().find("lora_A") != std::string::npos) EXPECT_EQ(role, "weight") << p.key();
    if (p.key().find("norm") != std::string::npos) EXPECT_EQ(role, "norm") << p.key();
    ++seen[role];
  }
  for (const char* r : {"scale", "gate", "prompt", "weight", "norm"}) EXPECT_GT(seen[r], 0) << r;

  // One step with a huge decay: IA³ scales start at 1 and move by the Adam step alone (±lr, or 0
  // where the gradient is 0); with no_decay emptied they shrink toward 0 as well.
  auto data = random_blocks(4);
  auto one_step = [&](std::vector<std::string> no_decay) {
    auto model = std::make_shared<PeftModel>(tiny_model("gpt2"));
    model->add_adapter("default", *methods::parse_config({{"peft_type", "IA3"}}));
    auto c = small_config();
    c.max_steps = 1;
    c.warmup_steps = 0;
    c.grad_accum = 1;
    c.lr = 1e-3;
    c.weight_decay = 10.0;
    c.no_decay = std::move(no_decay);
    train::Trainer(train::trainable_delta(*model), c, data).train();
    double farthest = 0;
    for (auto& [k, t] : model->adapter_state_dict("default"))
      farthest = std::max(farthest, (t.to(torch::kDouble) - 1.0).abs().max().item<double>());
    return farthest;
  };
  EXPECT_LE(one_step(train::TrainerConfig().no_decay), 1e-3 + 1e-6);
  EXPECT_GT(one_step({}), 1e-2) << "1 - lr * 10 = 0.99: decayed";
  EXPECT_NE(error_of([&] { one_step({"scales"}); }).find("no_decay: unknown role 'scales'"), std::string::npos);
}

TEST(Trainer, NonFiniteLossesAreSkippedThenFatal) {
  auto data = random_blocks(10);
  /// The 5th and 7th forward passes (steps 3 and 4 with grad_accum 2) return NaN.
  auto poisoned = [](LoraRun& r, int& calls) {
    auto t = r.target;
    t.forward = [&r, &calls](const models::ModelInputs& in) {
      auto out = r.target.forward(in);
      ++calls;
      if (calls == 5 || calls == 7) out.loss = out.loss * std::numeric_limits<double>::quiet_NaN();
      return out;
    };
    return t;
  };
  auto r = lora_run();
  int calls = 0;
  auto config = small_config();
  auto result = train::Trainer(poisoned(r, calls), config, data).train();
  EXPECT_EQ(result.nonfinite_steps, 2);
  EXPECT_EQ(result.losses.size(), 10u);
  for (double l : result.losses) EXPECT_TRUE(std::isfinite(l));

  auto again = lora_run();
  int calls2 = 0;
  config.max_nonfinite = 1;
  try {
    train::Trainer(poisoned(again, calls2), config, data).train();
    FAIL() << "expected an abort";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
  }
}

TEST(Trainer, EarlyStoppingKeepsTheBestDelta) {
  auto data = random_blocks(10);
  auto r = lora_run();
  TempDir dir;
  auto config = small_config(dir.path());
  config.lr = 1e-12;  // nothing improves
  config.max_steps = 40;
  config.eval_every = 2;
  config.early_stopping_patience = 3;
  auto result = train::Trainer(r.target, config, data, data).train();
  EXPECT_TRUE(result.early_stopped);
  EXPECT_EQ(result.steps, 8);
  ASSERT_TRUE(result.best_eval.has_value());
  EXPECT_GT(result.best_eval->perplexity, 1.0);
  EXPECT_TRUE(std::filesystem::exists(dir.file("best/adapter_config.json")));
}

TEST(Trainer, FullTrainingSavesAModelThatReloadsExactly) {
  auto data = random_blocks(10);
  auto model = tiny_model("gpt2");
  TempDir dir;
  auto config = small_config(dir.path());
  config.max_steps = 3;
  auto result = train::Trainer(train::trainable_model(model), config, data).train();
  EXPECT_EQ(result.losses.size(), 3u);
  auto reloaded = models::load_pretrained(dir.file("final"));
  auto a = model->named_parameters(), b = reloaded->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (auto& item : a) EXPECT_TRUE(bit_equal(item.value().detach(), b[item.key()])) << item.key();
}

}  // namespace
}  // namespace peft::test
