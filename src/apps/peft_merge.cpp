// peft-merge: folds a mergeable delta (LoRA) into its base and writes a plain Hugging Face
// model directory that runs at the base's cost (tokenizer files are copied along). A delta
// trained on a quantized base (QLoRA) merges into the unquantized base, in --dtype.
#include <filesystem>

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
  std::string model_dir, adapter_dir, out_dir, task, dtype;
  int64_t num_labels = 0;
  app.add_option("--model", model_dir, "base model directory")->required();
  app.add_option("--adapter", adapter_dir, "delta directory")->required();
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
  peft::PeftModel model(peft::models::load_pretrained(model_dir, load));
  peft::checkpoint::load_adapter(model, adapter_dir);
  auto merged = model.merge_and_unload();
  peft::models::save_pretrained(*merged, out_dir);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"})
    if (fs::exists(fs::path(model_dir) / f))
      fs::copy_file(fs::path(model_dir) / f, fs::path(out_dir) / f, fs::copy_options::overwrite_existing);
  fmt::print("wrote {} ({} merged into {})\n", out_dir, adapter_dir, merged->architecture());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return peft::core::run_main("peft-merge", [&] { return run(argc, argv); }); }
