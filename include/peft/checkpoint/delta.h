// Delta checkpoints: adapter_config.json + adapter_model.safetensors, in Hugging Face PEFT's
// layout and key naming, so deltas move both ways between this library and HF PEFT.
//
// Our own metadata rides in the safetensors "__metadata__" map (which HF ignores), leaving the
// config exactly as HF writes it: "peft_cpp_version", "peft_cpp_method", "peft_cpp_base_fingerprint".
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "peft/methods/method.h"
#include "peft/peft_model.h"

namespace peft::checkpoint {

inline constexpr const char* kConfigFile = "adapter_config.json";
inline constexpr const char* kWeightsFile = "adapter_model.safetensors";

/// Writes one adapter to `dir` (created if missing). A new directory appears complete or not at
/// all (written beside it, then renamed); an existing one has each file replaced atomically.
void save_adapter(PeftModel& model, const std::string& dir, const std::string& adapter = "default");

/// Writes what the adapter ships as: its method's deployable form where it has one (AdaMix: the
/// experts averaged into one adapter of one expert's size and cost), else the adapter itself.
/// What the trainer saves in best/ and final/.
void export_adapter(PeftModel& model, const std::string& dir, const std::string& adapter = "default");

/// HF's save_pretrained layout: "default" in `dir`, every other adapter in `dir/<name>/`.
void save_pretrained(PeftModel& model, const std::string& dir);

/// Reads and validates adapter_config.json.
std::shared_ptr<methods::MethodConfig> read_adapter_config(const std::string& dir);

struct LoadOptions {
  /// false: inference (parameters frozen, as HF's default); true: continue training.
  bool is_trainable = false;
  /// Load even when the delta records a different base fingerprint (a warning is logged).
  bool allow_base_mismatch = false;
  /// Replace the weights of the existing adapter `adapter` in place (servers: no module is built
  /// or removed, tensors keep their storage). The delta's config must equal the slot's in every
  /// field that shapes or scales it (everything but base_model_name_or_path, revision and
  /// inference_mode); otherwise, or with a mis-shaped tensor, it is refused with the field or
  /// tensor named and the slot keeps its weights. Not while the adapter is merged.
  bool hotswap = false;
};

/// Attaches the adapter stored in `dir` under `adapter` (or, with options.hotswap, loads it into
/// that existing slot). Every tensor is checked: a missing, unexpected or mis-shaped tensor is an
/// error naming it; nothing is attached or changed on error.
void load_adapter(PeftModel& model, const std::string& dir, const std::string& adapter = "default",
                  const LoadOptions& options = {});
/// Command-line adapter specs, each "NAME=DIR" or "DIR" (the adapter "default"), as (name, dir)
/// pairs in order; an empty part or a name given twice is an error naming it.
std::vector<std::pair<std::string, std::string>> parse_adapter_specs(const std::vector<std::string>& specs);
/// Loads adapters named on a command line: each spec is "NAME=DIR", or "DIR" for the adapter
/// "default". Returns the names in order (the first loaded is active). Two specs of one name are
/// refused before anything loads.
std::vector<std::string> load_adapters(PeftModel& model, const std::vector<std::string>& specs,
                                       const LoadOptions& options = {});

}  // namespace peft::checkpoint
