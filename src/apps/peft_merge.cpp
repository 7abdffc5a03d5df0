// peft-merge: folds a mergeable delta (LoRA) into its base and writes a plain Hugging Face
// model directory that runs at the base's cost (tokenizer files are copied along). A delta
// trained on a quantized base (QLoRA) merges into the unquantized base, in --dtype. With
// --combine, several deltas are first combined into one (add_weighted_adapter); --delta-only
// writes that combined delta instead of the merged model.
#include <filesystem>
#include <optional>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "peft/core/process.h"
#include "peft/checkpoint/delta.h"
#include "peft/core/dtype.h"
#include "peft/core/error.h"
#include "peft/models/load.h"
#include "peft/models/save.h"
#include "peft/peft_model.h"

namespace {
namespace fs = std::filesystem;

int run(int argc, char** argv) {
  CLI::App app{"Merge a delta into its base model and write a Hugging Face model directory.", "peft-merge"};
  std::string model_dir, out_dir, task, dtype;
  std::vector<std::string> adapter_specs;
  std::vector<double> weights;
  peft::methods::WeightedCombination how;
  std::string combine;
  std::optional<int64_t> svd_rank;
  std::optional<double> svd_clamp, density;
  bool delta_only = false;
  int64_t num_labels = 0;
  app.add_option("--model", model_dir, "base model directory")->required();
  app.add_option("--adapter", adapter_specs, "delta to merge: DIR, or NAME=DIR (repeatable with --combine)")->required();
  app.add_option("--combine", combine,
                 "combine the deltas first: linear | cat | svd | ties | dare_linear | dare_ties | magnitude_prune (or "
                 "ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd)");
  app.add_option("--weights", weights, "one weight per --adapter, comma-separated (with --combine)")->delimiter(',');
  app.add_option("--svd-rank", svd_rank, "rank of an svd combination (default: the largest source rank)");
  app.add_option("--svd-clamp", svd_clamp, "clamp the svd factors at this quantile of their entries");
  app.add_option("--density", density, "fraction kept by ties / dare / magnitude_prune, in (0, 1]");
  app.add_option("--majority-sign-method", how.majority_sign_method, "ties / dare_ties sign election: total | frequency")
      ->capture_default_str();
  app.add_option("--seed", how.seed, "seed of DARE's random drops")->capture_default_str();
  app.add_flag("--delta-only", delta_only,
               "write the combined delta (HF PEFT layout, loadable by peft-forward --adapter) instead of the merged "
               "model");
  app.add_option("--out", out_dir, "output model directory (written atomically)")->required();
  app.add_option("--task", task, "head of the base, when the delta trained a new one (e.g. sequence_classification)");
  app.add_option("--num-labels", num_labels, "label count of that head");
  app.add_option("--dtype", dtype,
                 "write the merged model in this dtype: float32 | bfloat16 | float16 (default: the base's); the base "
                 "is always loaded unquantized, so a delta trained on a quantized base merges exactly");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  PEFT_CHECK(fs::absolute(out_dir) != fs::absolute(model_dir), "cli", "--out must differ from --model");
  peft::models::LoadOptions load;
  load.task = task;
  if (num_labels > 0) load.num_labels = num_labels;
  load.dtype = peft::core::dtype_from_name(dtype, "--dtype");
  PEFT_CHECK(!combine.empty() || adapter_specs.size() == 1, "cli",
             "{} --adapter given: several deltas merge only through --combine", adapter_specs.size());
  PEFT_CHECK(!combine.empty() || (!delta_only && weights.empty()), "cli", "--weights and --delta-only need --combine");
  PEFT_CHECK(combine.empty() || weights.size() == adapter_specs.size(), "cli",
             "--weights has {} values for {} --adapter (one each expected)", weights.size(), adapter_specs.size());
  peft::PeftModel model(peft::models::load_pretrained(model_dir, load));
  const auto names = peft::checkpoint::load_adapters(model, adapter_specs);
  std::string merged_name = names.front();
  if (!combine.empty()) {
    how.combination_type = combine;
    how.svd_rank = svd_rank;
    how.svd_clamp = svd_clamp;
    how.density = density;
    merged_name = "combined";
    while (model.has_adapter(merged_name)) merged_name += "_";
    model.add_weighted_adapter(names, weights, merged_name, how);
  }
  if (delta_only) {
    peft::checkpoint::save_adapter(model, out_dir, merged_name);
    fmt::print("wrote {} ({} of {})\n", out_dir, combine, fmt::join(names, ", "));
    return 0;
  }
  model.set_adapter(merged_name);
  auto merged = model.merge_and_unload();
  peft::models::save_pretrained(*merged, out_dir);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"})
    if (fs::exists(fs::path(model_dir) / f))
      fs::copy_file(fs::path(model_dir) / f, fs::path(out_dir) / f, fs::copy_options::overwrite_existing);
  fmt::print("wrote {} ({} merged into {})\n", out_dir, combine.empty() ? adapter_specs.front() : combine + " of " + fmt::format("{}", fmt::join(names, ", ")), merged->architecture());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return peft::core::run_main("peft-merge", [&] { return run(argc, argv); }); }
