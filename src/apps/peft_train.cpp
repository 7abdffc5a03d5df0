// peft-train: one JSON config per run (model, method, data, trainer), --set overrides.
// Trains a delta with any registered method, or the whole model ("method": "full"), including
// pretraining from a fresh config ("init": "config"). Resumable with --resume.
#include <cstdlib>
#include <filesystem>
#include <thread>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "peft/train/distributed.h"
#include "peft/train/launch.h"
#include "peft/train/run_config.h"
#include "peft/train/training_adapter.h"
#include "peft/core/process.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"
#include "peft/methods/method.h"
#include "peft/peft_model.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Train a PEFT delta (or a whole model) from one JSON config.", "peft-train"};
  std::string config_path;
  std::vector<std::string> sets;
  bool resume = false;
  int threads = 0;
  app.add_option("--config", config_path, "run config (JSON; see configs/)")->required();
  app.add_option("--set", sets, "override a config value: key.path=value (value as JSON, else a string); repeatable");
  app.add_flag("--resume", resume, "continue from <output_dir>/state");
  bool overwrite = false;
  app.add_flag("--overwrite", overwrite, "replace an earlier run's outputs in output_dir (state/, best/, final/, log.jsonl)");
  app.add_option("--threads", threads, "CPU threads (default: all cores; with --nproc, per rank: the cores shared out)");
  int nproc = 1;
  app.add_option("--nproc", nproc, "data-parallel ranks to start on this machine (as torchrun --nproc-per-node)")
      ->check(CLI::Range(1, 1024));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (nproc > 1) {  // the launcher: the same command once per rank, without --nproc
    PEFT_CHECK(!std::getenv("WORLD_SIZE"), "launch", "--nproc inside a distributed run (WORLD_SIZE is set): use one or the other");
    peft::train::LocalLaunch launch;
    launch.argv = {argv[0]};
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--nproc") {
        ++i;
        continue;
      }
      if (a.rfind("--nproc=", 0) == 0) continue;
      launch.argv.push_back(a);
    }
    if (threads <= 0) {
      launch.argv.push_back("--threads");
      launch.argv.push_back(std::to_string(std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(nproc))));
    }
    launch.nproc = nproc;
    // Ranks that outlive a failed one are stuck: the others fail within the collective timeout.
    if (const auto timeout = std::getenv("PEFT_DIST_TIMEOUT")) launch.grace_s = std::min(30.0, std::max(1.0, std::atof(timeout)));
    return peft::train::launch_local_ranks(launch);
  }
  const auto config = peft::train::load_run_config(config_path, sets);
  peft::core::configure_threads(config.value("threads", threads));
  auto parts = peft::train::build_run(config, config_path, /*need_train=*/true);
  if (overwrite) parts.trainer.overwrite = true;
  // torchrun's environment (or --nproc's): join the ranks; rank 0 alone writes and prints.
  if (const auto dist = peft::train::distributed_options_from_env(); dist && dist->world_size > 1) {
    if (parts.trainer.device.is_cuda()) parts.trainer.device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(dist->local_rank));
    parts.trainer.distributed = std::make_shared<peft::train::DistributedContext>(*dist, parts.trainer.device);
  }
  const bool main_rank = !parts.trainer.distributed || parts.trainer.distributed->is_main();
  if (!main_rank) parts.trainer.progress = false;
  auto say = [main_rank](const std::string& line) {
    if (main_rank) fmt::print("{}\n", line);
  };
  if (main_rank) peft::train::prepare_output_dir(parts.trainer, resume);  // before anything is written
  if (parts.trainer.distributed) parts.trainer.distributed->barrier();    // ... by any rank
  say(fmt::format("train: {}", parts.train->describe()));
  const auto eval_sets = peft::train::evaluation_sets(parts);
  if (parts.validation) say(fmt::format("validation (selects best/): {}", parts.validation->describe()));
  if (parts.eval) say(fmt::format("{}: {}", eval_sets.test ? "test (scored once, at the end)" : "eval", parts.eval->describe()));

  const nlohmann::json method = config.value("method", nlohmann::json("full"));
  std::unique_ptr<peft::PeftModel> peft_model;
  peft::train::Trainable target;
  if (method.is_string()) {
    PEFT_CHECK(method == "full", "config", "{}: method must be \"full\" or a method config object, found {}",
               config_path, method.dump());
    target = peft::train::trainable_model(parts.model);
    int64_t n = 0;
    for (const auto& p : parts.model->parameters()) n += p.numel();
    say(fmt::format("full training: {} parameters", n));
  } else {
    peft_model = std::make_unique<peft::PeftModel>(parts.model);
    peft_model->set_precision({parts.delta_dtype, parts.save_dtype});
    const peft::data::DatasetBatches batches(parts.train, parts.trainer.batch_size, parts.trainer.device);
    peft::train::add_training_adapter(*peft_model, "default", *peft::methods::parse_config(method), batches,
                                      parts.trainer.output_dir, resume);
    target = peft::train::trainable_delta(*peft_model);
    say(peft_model->trainable_parameters_report());
  }
  if (!parts.trainer.output_dir.empty() && main_rank) {
    std::filesystem::create_directories(parts.trainer.output_dir);
    peft::core::write_json_file(parts.trainer.output_dir + "/run_config.json", config);
  }
  peft::train::Trainer trainer(target, parts.trainer, parts.train, eval_sets.selection, eval_sets.test);
  if (resume) {
    PEFT_CHECK(!parts.trainer.output_dir.empty(), "config", "--resume needs output_dir");
    trainer.resume(parts.trainer.output_dir + "/state");
  }
  auto result = trainer.train();
  if (result.last_eval)
    say(fmt::format("{} after step {}: {}", parts.validation ? "validation" : "eval", result.steps, result.last_eval->to_json()));
  if (result.test_eval)
    say(fmt::format("test of the delta of step {} (the best on validation): {}", result.selected_step,
                    result.test_eval->to_json()));
  if (auto& d = parts.trainer.distributed; d && !result.losses.empty())
    say(fmt::format("distributed: {} ranks ({}); communication {:.2f} s of this rank's run", d->world_size(), d->backend(),
                    d->communication_seconds()));
  if (result.interrupted) {
    say(fmt::format("interrupted; continue with: peft-train --config {} --resume", config_path));
    return 130;
  }
  if (!parts.trainer.output_dir.empty())
    say(fmt::format("saved: {}/final ({})", parts.trainer.output_dir, method.is_string() ? "model" : "delta"));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-train", [&] { return run(argc, argv); });
}
