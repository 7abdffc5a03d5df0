// Data-parallel training as real processes on loopback (peft-train --nproc 2, torchrun's
// environment): 2 ranks on a global batch of 16 equal 1 process on the same batch (losses,
// evaluation and the final delta) for LoRA, a bottleneck adapter, prefix tuning, AdaMix's routing
// and methods with state derived from data (DSEE, LST, S3PET); resume after a rank is killed; a
// hung rank, a rank that never arrives and a wrong MASTER_PORT end with errors naming them.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"
#include "peft/train/distributed.h"
#include "test_util.h"

#if defined(PEFT_TRAIN_BIN) && defined(PEFT_SOURCE_DIR)

namespace peft::test {
namespace {

struct Run {
  std::vector<double> losses;
  std::vector<std::string> evals;
};

Run read_log(const std::string& path) {
  Run r;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) r.losses.push_back(j["loss"].get<double>());
    if (j.contains("eval")) r.evals.push_back(j["eval"].dump());
  }
  return r;
}

/// A short run on the bundled tiny GPT-2: spam classification or SOTU language modelling.
nlohmann::json run_config(const std::string& out, const nlohmann::json& method, bool classify, int64_t steps,
                          const std::string& dtype = "float32") {
  nlohmann::json data = classify ? nlohmann::json{{"kind", "jsonl_classification"},
                                                  {"train", source("examples/data/spam/train.jsonl")},
                                                  {"eval", source("examples/data/spam/test.jsonl")},
                                                  {"max_length", 48}}
                                 : nlohmann::json{{"kind", "text"},
                                                  {"train", source("examples/data/sotu/train.txt")},
                                                  {"eval", source("examples/data/sotu/test.txt")},
                                                  {"block_size", 32}};
  return {{"model", source("examples/models/tiny-gpt2-en")},
          {"task", classify ? "sequence_classification" : "causal_lm"},
          {"method", method},
          {"data", data},
          {"trainer", {{"max_steps", steps}, {"batch_size", 16}, {"lr", 0.01}, {"warmup_steps", 0}, {"eval_every", 2},
                       {"eval_batches", 3}, {"log_every", 1}, {"max_grad_norm", 1.0}}},
          {"output_dir", out},
          {"dtype", dtype},
          {"seed", 7}};
}

void expect_same_delta(const std::string& a, const std::string& b, const std::string& what, double tolerance = 1e-6) {
  const auto x = safetensors::load_file(a + "/adapter_model.safetensors");
  const auto y = safetensors::load_file(b + "/adapter_model.safetensors");
  ASSERT_EQ(x.size(), y.size()) << what;
  for (const auto& [name, t] : x) {
    ASSERT_TRUE(y.count(name)) << what << " " << name;
    EXPECT_LT(max_abs_diff(t.to(torch::kFloat64), y.at(name).to(torch::kFloat64)), tolerance) << what << " " << name;
  }
}

struct Case {
  std::string name;
  nlohmann::json method;
  bool classify;
  std::string dtype = "float64";
};

TEST(Distributed, TwoRanksOnAGlobalBatchEqualOneProcess) {
  const std::vector<Case> cases = {
      {"lora", {{"peft_type", "LORA"}, {"task_type", "SEQ_CLS"}, {"r", 4}, {"fan_in_fan_out", true}}, true},
      {"bottleneck", {{"peft_type", "BOTTLENECK_ADAPTER"}, {"task_type", "SEQ_CLS"}, {"bottleneck_size", 16}}, true},
      {"prefix", {{"peft_type", "PREFIX_TUNING"}, {"task_type", "CAUSAL_LM"}, {"num_virtual_tokens", 4}}, false},
      {"adamix", {{"peft_type", "ADAMIX"}, {"task_type", "CAUSAL_LM"}, {"num_experts", 4}}, false},
      // State from data before training (masks, Fisher-initialised side network, a searched
      // structure): every rank derives the same, and training keeps it in step.
      {"dsee", {{"peft_type", "DSEE"}, {"task_type", "SEQ_CLS"}, {"r", 4}, {"num_sparse", 32}}, true},
      {"lst", {{"peft_type", "LST"}, {"task_type", "SEQ_CLS"}, {"reduction_factor", 8}, {"side_init", "fisher"}, {"fisher_batches", 2}}, true},
      {"s3pet", {{"peft_type", "S3PET"}, {"task_type", "CAUSAL_LM"}, {"budget", 0.002}, {"search_space", {"lora", "bias", "ln", "adapter"}},
                 {"search", {{"strategy", "darts"}, {"steps", 6}, {"validation_fraction", 0.2}, {"seed", 1}}}}, false},
      {"lora float32", {{"peft_type", "LORA"}, {"task_type", "SEQ_CLS"}, {"r", 4}, {"fan_in_fan_out", true}}, true, "float32"},
  };
  const std::string train = PEFT_TRAIN_BIN;
  for (const auto& c : cases) {
    TempDir dir;
    core::write_json_file(dir.file("one.json"), run_config(dir.file("one"), c.method, c.classify, 4, c.dtype));
    core::write_json_file(dir.file("two.json"), run_config(dir.file("two"), c.method, c.classify, 4, c.dtype));
    ASSERT_EQ(run(train + " --threads 1 --config " + dir.file("one.json"), dir.file("one.log")), 0) << slurp(dir.file("one.log"));
    ASSERT_EQ(run(train + " --nproc 2 --config " + dir.file("two.json"), dir.file("two.log")), 0) << slurp(dir.file("two.log"));
    const auto one = read_log(dir.file("one/log.jsonl")), two = read_log(dir.file("two/log.jsonl"));
    ASSERT_EQ(one.losses.size(), 4u) << c.name;
    ASSERT_EQ(two.losses.size(), one.losses.size()) << c.name << ": rank 0 alone writes the log";
    // The log prints 6 decimals: two values within 1e-6 may print 2e-6 apart.
    for (size_t i = 0; i < one.losses.size(); ++i) EXPECT_NEAR(two.losses[i], one.losses[i], 2e-6) << c.name << " step " << i + 1;
    if (c.dtype == "float64") {
      // Exact but for summation order: the two ranks' mean of means against one mean over the batch.
      EXPECT_EQ(two.evals, one.evals) << c.name << ": sharded evaluation reduces to the single-process scores";
      expect_same_delta(dir.file("one/final"), dir.file("two/final"), c.name, 1e-9);
    } else {
      // In float32 that order moves gradient components near Adam's eps (1e-8) enough to change
      // their first updates by up to ~1e-5 of lr-sized steps (one process is bit-stable across thread counts).
      expect_same_delta(dir.file("one/final"), dir.file("two/final"), c.name, 1e-4);
    }
    EXPECT_NE(slurp(dir.file("two.log")).find("distributed: 2 ranks (gloo)"), std::string::npos) << slurp(dir.file("two.log"));
  }
}

pid_t child_of(pid_t parent, int nth) {
  std::ifstream in("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
  std::vector<pid_t> kids;
  for (pid_t p; in >> p;) kids.push_back(p);
  return nth < static_cast<int>(kids.size()) ? kids[static_cast<size_t>(nth)] : 0;
}

TEST(Distributed, ResumesAfterARankIsKilledAndNamesIt) {
  TempDir dir;
  const nlohmann::json lora = {{"peft_type", "LORA"}, {"task_type", "SEQ_CLS"}, {"r", 4}, {"fan_in_fan_out", true}};
  auto cfg = run_config(dir.file("run"), lora, true, 40);
  cfg["trainer"]["save_every"] = 1;
  cfg["trainer"]["eval_every"] = 0;
  core::write_json_file(dir.file("run.json"), cfg);
  auto full = run_config(dir.file("full"), lora, true, 40);
  full["trainer"]["eval_every"] = 0;
  core::write_json_file(dir.file("full.json"), full);
  const std::string train = PEFT_TRAIN_BIN;
  ASSERT_EQ(run(train + " --nproc 2 --config " + dir.file("full.json"), dir.file("full.log")), 0) << slurp(dir.file("full.log"));

  // The same run, rank 1 killed once a state is saved.
  const pid_t launcher = fork();
  if (launcher == 0) {
    const std::string log = dir.file("killed.log");
    freopen(log.c_str(), "w", stdout);
    dup2(fileno(stdout), STDERR_FILENO);
    execl(train.c_str(), train.c_str(), "--nproc", "2", "--config", dir.file("run.json").c_str(), nullptr);
    _exit(127);
  }
  bool killed = false;
  for (int i = 0; i < 3000 && !killed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!std::filesystem::exists(dir.file("run/state/trainer_state.json"))) continue;
    const pid_t rank1 = child_of(launcher, 1);
    if (rank1 > 0) killed = kill(rank1, SIGKILL) == 0;
  }
  int status = 0;
  waitpid(launcher, &status, 0);
  ASSERT_TRUE(killed) << slurp(dir.file("killed.log"));
  const std::string killed_log = slurp(dir.file("killed.log"));
  ASSERT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the run finished before rank 1 was killed: " << killed_log;
  EXPECT_NE(killed_log.find("rank 1 was killed by signal 9"), std::string::npos) << killed_log;
  EXPECT_NE(killed_log.find("rank 0: "), std::string::npos) << "rank 0 fails on its next collective: " << killed_log;

  ASSERT_EQ(run(train + " --nproc 2 --resume --config " + dir.file("run.json"), dir.file("resume.log")), 0)
      << slurp(dir.file("resume.log"));
  const auto resumed = read_log(dir.file("run/log.jsonl")), whole = read_log(dir.file("full/log.jsonl"));
  ASSERT_GE(resumed.losses.size(), whole.losses.size());
  // The log holds the killed run's steps, then the resumed ones from the saved step on: its last
  // 40 - saved losses equal the uninterrupted run's.
  for (size_t k = 1; k <= 5; ++k)
    EXPECT_NEAR(resumed.losses[resumed.losses.size() - k], whole.losses[whole.losses.size() - k], 1e-6) << k;
  expect_same_delta(dir.file("run/final"), dir.file("full/final"), "resumed");
}

TEST(Distributed, AHungRankIsNamedWithinTheTimeout) {
  TempDir dir;
  auto cfg = run_config(dir.file("run"), {{"peft_type", "LORA"}, {"task_type", "SEQ_CLS"}, {"r", 2}}, true, 400);
  cfg["trainer"]["eval_every"] = 0;
  core::write_json_file(dir.file("run.json"), cfg);
  const std::string train = PEFT_TRAIN_BIN;
  const pid_t launcher = fork();
  if (launcher == 0) {
    const std::string log = dir.file("hung.log");
    freopen(log.c_str(), "w", stdout);
    dup2(fileno(stdout), STDERR_FILENO);
    setenv("PEFT_DIST_TIMEOUT", "3", 1);
    execl(train.c_str(), train.c_str(), "--nproc", "2", "--config", dir.file("run.json").c_str(), nullptr);
    _exit(127);
  }
  // Once training runs (a log line), rank 1 stops answering: SIGSTOP, as a hung process.
  bool stopped = false;
  for (int i = 0; i < 3000 && !stopped; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (slurp(dir.file("run/log.jsonl")).empty()) continue;
    if (const pid_t rank1 = child_of(launcher, 1); rank1 > 0) stopped = kill(rank1, SIGSTOP) == 0;
  }
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  waitpid(launcher, &status, 0);
  const std::string log = slurp(dir.file("hung.log"));
  ASSERT_TRUE(stopped) << log;
  EXPECT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << log;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 60) << "no hang: " << log;
  EXPECT_NE(log.find("not arrived: rank 1"), std::string::npos) << log;
  EXPECT_NE(log.find("rank 1 still running: terminated"), std::string::npos) << log;
}

/// One rank started by hand, with torchrun's variables.
int rank_alone(const std::string& config, int rank, int port, const std::string& log, double timeout_s) {
  const std::string env = fmt::format("WORLD_SIZE=2 RANK={} LOCAL_RANK={} MASTER_ADDR=127.0.0.1 MASTER_PORT={} PEFT_DIST_TIMEOUT={}",
                                      rank, rank, port, timeout_s);
  return run(env + " " + PEFT_TRAIN_BIN + " --threads 1 --config " + config, log);
}

TEST(Distributed, AMissingRankOrAWrongPortIsAnErrorNotAHang) {
  TempDir dir;
  core::write_json_file(dir.file("run.json"),
                        run_config(dir.file("run"), {{"peft_type", "LORA"}, {"task_type", "SEQ_CLS"}, {"r", 2}}, true, 2));
  const int port = 20000 + static_cast<int>(getpid() % 20000);
  // Rank 0 waits for a rank 1 that never comes.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_NE(rank_alone(dir.file("run.json"), 0, port, dir.file("r0.log"), 2), 0);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30);
  EXPECT_NE(slurp(dir.file("r0.log")).find("rank(s) 1 never joined"), std::string::npos) << slurp(dir.file("r0.log"));
  // Rank 1 pointed at a port nobody listens on.
  EXPECT_NE(rank_alone(dir.file("run.json"), 1, port + 1, dir.file("r1.log"), 2), 0);
  EXPECT_NE(slurp(dir.file("r1.log")).find("is rank 0 running"), std::string::npos) << slurp(dir.file("r1.log"));
  // Malformed variables are named.
  EXPECT_NE(run("WORLD_SIZE=2 RANK=5 " + std::string(PEFT_TRAIN_BIN) + " --config " + dir.file("run.json"), dir.file("e.log")), 0);
  EXPECT_NE(slurp(dir.file("e.log")).find("RANK=5"), std::string::npos) << slurp(dir.file("e.log"));
  // The global batch must split evenly.
  EXPECT_NE(run(std::string(PEFT_TRAIN_BIN) + " --nproc 3 --config " + dir.file("run.json"), dir.file("b.log")), 0);
  EXPECT_NE(slurp(dir.file("b.log")).find("must divide by the world size 3"), std::string::npos) << slurp(dir.file("b.log"));
}

}  // namespace
}  // namespace peft::test

#endif
