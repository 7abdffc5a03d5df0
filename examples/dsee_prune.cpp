// peft-dsee-prune: DSEE end to end. Stage 1 trains a sparse + low-rank update on a frozen base;
// stage 2 prunes the block projections (global magnitude of W₀ + ΔW, plus whole attention heads),
// re-tunes the update under the mask, and writes the merged, sparse model. Prints the accuracy
// after each stage with the weights and multiply-adds removed, as JSON.
#include <filesystem>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <peft/train/run_config.h>
#include <peft/core/process.h>
#include <peft/core/json_io.h>
#include <peft/methods/dsee/dsee_prune.h>
#include <peft/methods/method.h>
#include <peft/models/save.h>
#include <peft/peft_model.h>
#include <peft/train/trainer.h>

namespace {

int run(int argc, char** argv) {
  CLI::App app{"DSEE: train a sparse + low-rank delta, prune the model, re-tune, write the sparse merged model.",
               "peft-dsee-prune"};
  std::string config_path = "configs/vit_fashion_dsee.json", out_dir = "runs/dsee-prune";
  std::vector<std::string> overrides;
  peft::methods::DseePruneOptions prune;
  prune.heads_to_prune = 1;
  int64_t retune_steps = 200;
  int threads = 0;
  app.add_option("--config", config_path, "run config (as peft-train's; method must be DSEE)")->capture_default_str();
  app.add_option("--set", overrides, "key.path=value overrides of the run config");
  app.add_option("--pruning-ratio", prune.pruning_ratio, "fraction of block-projection weights zeroed")
      ->capture_default_str()->check(CLI::Range(0.0, 0.99));
  app.add_option("--heads", prune.heads_to_prune, "attention heads removed per layer")->capture_default_str();
  app.add_option("--retune-steps", retune_steps, "steps of re-tuning under the mask")->capture_default_str();
  app.add_option("--out", out_dir, "output directory (stage logs, report.json, merged/)")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  peft::core::configure_threads(threads);
  const auto config = peft::train::load_run_config(config_path, overrides);
  auto parts = peft::train::build_run(config, config_path, /*need_train=*/true);
  PEFT_CHECK(parts.eval, "cli", "{}: data needs an eval split to report accuracy", config_path);
  peft::PeftModel model(parts.model);
  model.add_adapter("default", *peft::methods::parse_config(config.at("method")));
  PEFT_CHECK(model.adapter_config("default").method() == "dsee", "cli", "{}: method must be DSEE", config_path);
  auto target = peft::train::trainable_delta(model);
  auto score = [&] {
    model.eval();
    return peft::train::evaluate(target.forward, *parts.eval, parts.trainer.batch_size, 0, parts.trainer.device);
  };
  auto train = [&](const std::string& stage, int64_t steps) {
    auto tc = parts.trainer;
    tc.max_steps = steps;
    tc.warmup_steps = std::min(tc.warmup_steps, steps);
    tc.output_dir = out_dir + "/" + stage;
    tc.overwrite = true;  // the example's own --out: each run replaces the last
    const auto sets = peft::train::evaluation_sets(parts);
    peft::train::Trainer(target, tc, parts.train, sets.selection, sets.test).train();
  };

  nlohmann::json report;
  report["base"] = nlohmann::json::parse(score().to_json());
  train("stage1", parts.trainer.max_steps);
  report["stage1"] = nlohmann::json::parse(score().to_json());
  const auto pruned = peft::methods::dsee_prune(model, "default", prune);
  report["pruning"] = pruned.to_json();
  report["pruned"] = nlohmann::json::parse(score().to_json());
  train("retune", retune_steps);
  report["retuned"] = nlohmann::json::parse(score().to_json());
  auto merged = model.merge_and_unload();
  peft::models::save_pretrained(*merged, out_dir + "/merged");
  fmt::print("{}\n", report.dump(2));
  peft::core::write_json_file(out_dir + "/report.json", report);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-dsee-prune", [&] { return run(argc, argv); });
}
