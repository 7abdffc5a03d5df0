// peft-eval: evaluates a model (optionally with a delta) on the eval data of a run config:
// loss, and accuracy / macro-F1 for classifiers or perplexity for language models, as JSON; for
// sequence-to-sequence data also exact match and ROUGE-L of what the model generates.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "peft/train/run_config.h"
#include "peft/core/process.h"
#include "peft/checkpoint/delta.h"
#include "peft/core/atomic_file.h"
#include "peft/core/error.h"
#include "peft/peft_model.h"
#include "peft/train/generation_eval.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Evaluate a model (and optionally a delta) on a run config's eval data; prints JSON.", "peft-eval"};
  std::string config_path, adapter_dir, out_path;
  std::vector<std::string> sets;
  int threads = 0;
  int64_t batch = 32;
  app.add_option("--config", config_path, "run config (the one used for training)")->required();
  app.add_option("--set", sets, "override a config value: key.path=value; repeatable");
  app.add_option("--adapter", adapter_dir, "delta directory (e.g. <output_dir>/final)");
  app.add_option("--batch", batch, "examples per batch")->capture_default_str();
  app.add_option("--out", out_path, "also write the JSON here");
  std::string split = "test";
  app.add_option("--split", split, "test (data.eval) or validation (data.validation / validation_fraction)")
      ->capture_default_str()
      ->check(CLI::IsMember({"test", "validation"}));
  peft::GenerationConfig gen;
  gen.max_new_tokens = 32;
  int64_t generate_examples = 0;
  app.add_option("--max-new-tokens", gen.max_new_tokens, "seq2seq data: tokens generated per source")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--generate-examples", generate_examples, "seq2seq data: score the first N sources (0 = all)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  const auto config = peft::train::load_run_config(config_path, sets);
  peft::core::configure_threads(config.value("threads", threads));
  auto parts = peft::train::build_run(config, config_path, /*need_train=*/false);
  const auto set = split == "test" ? parts.eval : parts.validation;
  PEFT_CHECK(set, "config", "{}: {} is required for evaluating --split {}", config_path,
             split == "test" ? "data.eval (or data.eval_images)" : "data.validation or data.validation_fraction", split);
  peft::PeftModel model(parts.model);
  if (!adapter_dir.empty()) peft::checkpoint::load_adapter(model, adapter_dir);
  model.eval();
  auto r = peft::train::evaluate([&](const peft::models::ModelInputs& in) { return model.forward(in); }, *set, batch, 0,
                                 parts.trainer.device);
  std::string json = r.to_json();
  if (peft::train::is_seq2seq(*set)) {
    const auto g = peft::train::evaluate_generation(model, *set, *parts.tokenizer, gen, batch, generate_examples);
    json = json.substr(0, json.size() - 1) + ", " + g.to_json().substr(1);  // one object
  }
  fmt::print("{}\n", json);
  if (!out_path.empty()) peft::core::write_file_atomic(out_path, json + "\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-eval", [&] { return run(argc, argv); });
}
