// peft-inspect: prints a model's module tree folded over repeated layers, with parameter counts
// and what is trainable; optionally with an adapter loaded or a method config attached.
#include <filesystem>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "peft/core/process.h"
#include "peft/checkpoint/delta.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/inspect.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/core/safetensors.h"
#include "peft/core/strings.h"
#include "peft/peft_model.h"

namespace {

/// A delta directory: its config, and each tensor with shape, dtype and size.
int inspect_delta(const std::string& dir) {
  const auto config = peft::core::read_json_file(dir + "/adapter_config.json");
  const auto path = dir + "/adapter_model.safetensors";
  PEFT_CHECK(std::filesystem::exists(path), "cli", "{}: missing adapter_model.safetensors", dir);
  peft::safetensors::File file(path);
  fmt::print("delta {} ({} {})\n", dir, config.value("peft_type", "?"), config.value("task_type", nlohmann::json()).dump());
  int64_t total = 0;
  for (const auto& t : file.tensors()) {
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    total += n;
    fmt::print("  {}  {} {}  {}\n", t.name, peft::safetensors::dtype_name(t.dtype), fmt::format("[{}]", fmt::join(t.shape, ", ")),
               peft::core::with_thousands(n));
  }
  fmt::print("{} tensors, {} parameters, {} bytes on disk\n", file.tensors().size(), peft::core::with_thousands(total),
             peft::core::with_thousands(static_cast<int64_t>(std::filesystem::file_size(path))));
  for (const auto& [k, v] : file.metadata()) fmt::print("metadata {} = {}\n", k, v);
  fmt::print("config {}\n", config.dump(2));
  return 0;
}

/// The method's analytic count on the config's geometry: nothing is allocated.
int count_from_geometry(const std::string& model_dir, const std::string& config_path) {
  PEFT_CHECK(!config_path.empty(), "cli", "--count needs --config (the method config to count)");
  const auto cfg = (std::filesystem::path(model_dir) / "config.json").string();
  PEFT_CHECK(std::filesystem::exists(cfg), "cli", "{}: missing config.json", model_dir);
  const auto g = peft::models::model_geometry(peft::core::read_json_file(cfg));
  auto method_config = peft::methods::parse_config_file(config_path);
  method_config->validate();
  const auto& method = peft::methods::find_method(method_config->method());
  PEFT_CHECK(static_cast<bool>(method.count), "cli",
             "--count: method {} has no geometry-only count; drop --count to build the model and count it",
             method.name);
  fmt::print("{} on {} layers, hidden {}, {} heads ({} key/value), head_dim {}: trainable params: {}\n", method.name,
             g.num_layers, g.hidden_size, g.num_heads, g.num_kv_heads, g.head_dim,
             peft::core::with_thousands(method.count(*method_config, g)));
  return 0;
}

int run(int argc, char** argv) {
  CLI::App app{"Print a model's module tree (repeated layers folded), parameter counts and trainable tensors.",
               "peft-inspect"};
  std::string model_dir, adapter_dir, config_path, task, quant, compute_dtype;
  bool double_quant = false;
  int64_t num_labels = 0;
  int depth = -1;
  bool no_fold = false, no_shapes = false, no_weights = false, count_only = false;
  app.add_option("dir", model_dir, "Hugging Face model directory, or a delta directory (adapter_config.json)")->required();
  app.add_option("--task", task,
                 "head: causal_lm | sequence_classification | image_classification | feature_extraction "
                 "(default: config.json's architectures)");
  app.add_option("--num-labels", num_labels, "label count of a classification head");
  app.add_option("--adapter", adapter_dir, "also load this delta directory (trainable, to show what trains)");
  app.add_option("--config", config_path, "also attach a fresh adapter from this method config (JSON)");
  app.add_option("--quant", quant, "load the base quantized: int8 | nf4 | fp4 (shows each layer's storage)");
  app.add_flag("--double-quant", double_quant, "with --quant nf4 / fp4: quantize the absmax values too");
  app.add_option("--compute-dtype", compute_dtype, "with --quant: float32 (default) | bfloat16 | float16");
  app.add_option("--depth", depth, "print this many levels below the root (default: all)");
  app.add_flag("--no-fold", no_fold, "print every layer instead of folding identical ones");
  app.add_flag("--no-shapes", no_shapes, "omit each module's tensor list");
  app.add_flag("--no-weights", no_weights, "build from config.json alone (random weights; no model.safetensors needed)");
  app.add_flag("--count", count_only,
               "with --config: the method's trainable parameter count from config.json's geometry alone, without "
               "building the model (e.g. a 7B configuration on a laptop)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  PEFT_CHECK(adapter_dir.empty() || config_path.empty(), "cli", "give --adapter or --config, not both");
  if (!std::filesystem::exists(std::filesystem::path(model_dir) / "config.json") &&
      std::filesystem::exists(std::filesystem::path(model_dir) / "adapter_config.json"))
    return inspect_delta(model_dir);
  if (count_only) return count_from_geometry(model_dir, config_path);
  peft::models::LoadOptions load;
  load.task = task;
  if (num_labels > 0) load.num_labels = num_labels;
  PEFT_CHECK(!quant.empty() || (!double_quant && compute_dtype.empty()), "cli",
             "--double-quant and --compute-dtype apply with --quant");
  if (!quant.empty()) {
    nlohmann::json q = {{"type", quant}, {"double_quant", double_quant}};
    if (!compute_dtype.empty()) q["compute_dtype"] = compute_dtype;
    load.quantization = peft::models::QuantizationConfig::from_json(q, "--quant");
  }
  std::shared_ptr<peft::models::PretrainedModel> base;
  if (no_weights) {
    const auto cfg = (std::filesystem::path(model_dir) / "config.json").string();
    PEFT_CHECK(std::filesystem::exists(cfg), "cli", "{}: missing config.json", model_dir);
    base = peft::models::create_model(peft::core::read_json_file(cfg), load.task, load.num_labels);
    if (load.quantization) peft::models::quantize_model(*base, *load.quantization);
  } else {
    base = peft::models::load_pretrained(model_dir, load);
  }
  peft::PeftModel model(base);
  if (!adapter_dir.empty()) {
    peft::checkpoint::LoadOptions opts;
    opts.is_trainable = true;
    peft::checkpoint::load_adapter(model, adapter_dir, "default", opts);
  } else if (!config_path.empty()) {
    // Where a method attaches does not depend on data: no batches are needed to show it.
    model.add_adapter_without_data("default", *peft::methods::parse_config_file(config_path));
  }

  peft::TreeOptions options;
  options.fold_repeats = !no_fold;
  options.max_depth = depth;
  options.show_shapes = !no_shapes;
  options.show_bytes = true;
  fmt::print("{}", peft::module_tree(*base, base->architecture(), options));
  fmt::print("* = trainable\n{}\n", model.trainable_parameters_report());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return peft::core::run_main("peft-inspect", [&] { return run(argc, argv); }); }
