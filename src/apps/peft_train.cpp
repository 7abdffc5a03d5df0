// peft-train: one JSON config per run (model, method, data, trainer), --set overrides.
// Trains a delta with any registered method, or the whole model ("method": "full"), including
// pretraining from a fresh config ("init": "config"). Resumable with --resume.
#include <filesystem>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

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
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  const auto config = peft::train::load_run_config(config_path, sets);
  peft::core::configure_threads(config.value("threads", threads));
  auto parts = peft::train::build_run(config, config_path, /*need_train=*/true);
  if (overwrite) parts.trainer.overwrite = true;
  peft::train::prepare_output_dir(parts.trainer, resume);  // before anything is written
  fmt::print("train: {}\n", parts.train->describe());
  const auto eval_sets = peft::train::evaluation_sets(parts);
  if (parts.validation) fmt::print("validation (selects best/): {}\n", parts.validation->describe());
  if (parts.eval) fmt::print("{}: {}\n", eval_sets.test ? "test (scored once, at the end)" : "eval", parts.eval->describe());

  const nlohmann::json method = config.value("method", nlohmann::json("full"));
  std::unique_ptr<peft::PeftModel> peft_model;
  peft::train::Trainable target;
  if (method.is_string()) {
    PEFT_CHECK(method == "full", "config", "{}: method must be \"full\" or a method config object, found {}",
               config_path, method.dump());
    target = peft::train::trainable_model(parts.model);
    int64_t n = 0;
    for (const auto& p : parts.model->parameters()) n += p.numel();
    fmt::print("full training: {} parameters\n", n);
  } else {
    peft_model = std::make_unique<peft::PeftModel>(parts.model);
    peft_model->set_precision({parts.delta_dtype, parts.save_dtype});
    const peft::data::DatasetBatches batches(parts.train, parts.trainer.batch_size, parts.trainer.device);
    peft::train::add_training_adapter(*peft_model, "default", *peft::methods::parse_config(method), batches,
                                      parts.trainer.output_dir, resume);
    target = peft::train::trainable_delta(*peft_model);
    fmt::print("{}\n", peft_model->trainable_parameters_report());
  }
  if (!parts.trainer.output_dir.empty()) {
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
    fmt::print("{} after step {}: {}\n", parts.validation ? "validation" : "eval", result.steps,
               result.last_eval->to_json());
  if (result.test_eval)
    fmt::print("test of the delta of step {} (the best on validation): {}\n", result.selected_step,
               result.test_eval->to_json());
  if (result.interrupted) {
    fmt::print("interrupted; continue with: peft-train --config {} --resume\n", config_path);
    return 130;
  }
  if (!parts.trainer.output_dir.empty())
    fmt::print("saved: {}/final ({})\n", parts.trainer.output_dir, method.is_string() ? "model" : "delta");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-train", [&] { return run(argc, argv); });
}
