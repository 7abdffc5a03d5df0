#include "peft/checkpoint/delta.h"

#include "core/generator_state.h"

#include <unistd.h>

#include <filesystem>
#include <random>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"
#include "peft/core/safetensors.h"
#include "peft/core/version.h"
#include "peft/methods/prompt/prompt_learning.h"
#include "peft/nn/module_dtype.h"

namespace peft::checkpoint {
namespace fs = std::filesystem;
namespace {

constexpr const char* kC = "checkpoint";

void write_files(PeftModel& model, const std::string& dir, const std::string& adapter) {
  const auto config = model.adapter_config(adapter).to_file_json();
  safetensors::Metadata meta = {{"format", "pt"},
                                {"peft_cpp_version", version()},
                                {"peft_cpp_method", model.adapter_config(adapter).method()},
                                {"peft_cpp_base_fingerprint", model.base_fingerprint()}};
  // Weights first: a crash between the two renames leaves the old config beside new weights of
  // the same adapter, never a config that promises tensors the directory lacks.
  auto tensors = model.adapter_state_dict(adapter);
  const auto& save_dtype = model.precision().save_dtype;
  for (auto& [key, t] : tensors) {
    if (!t.is_floating_point()) continue;
    if (save_dtype) t = t.to(*save_dtype);
    else if (nn::is_half_precision(t.scalar_type())) t = t.to(torch::kFloat);  // exact
  }
  safetensors::save_file((fs::path(dir) / kWeightsFile).string(), tensors, meta);
  core::write_ordered_json_file((fs::path(dir) / kConfigFile).string(), config);
}

}  // namespace

void save_adapter(PeftModel& model, const std::string& dir, const std::string& adapter) {
  PEFT_CHECK(model.has_adapter(adapter), kC, "cannot save adapter '{}': the model has no such adapter", adapter);
  if (fs::exists(dir)) {
    PEFT_CHECK(fs::is_directory(dir), kC, "'{}' exists and is not a directory", dir);
    write_files(model, dir, adapter);
    return;
  }
  fs::path target = fs::path(dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  fs::create_directories(parent);
  fs::path staging = parent / fmt::format(".{}.tmp-{}-{}", target.filename().string(), ::getpid(), std::random_device{}());
  fs::create_directory(staging);
  try {
    write_files(model, staging.string(), adapter);
    fs::rename(staging, target);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(staging, ec);
    throw;
  }
}

void export_adapter(PeftModel& model, const std::string& dir, const std::string& adapter) {
  const auto& method = methods::find_method(model.adapter_config(adapter).method());
  // The deployable form is built as a fresh adapter and overwritten: its random init must not
  // move the generators training draws from.
  core::GeneratorStateGuard keep_generators;
  const std::string deployed = adapter + "-deployed";
  if (!method.deploy || !method.deploy(model, adapter, deployed)) return save_adapter(model, dir, adapter);
  try {
    save_adapter(model, dir, deployed);
  } catch (...) {
    model.delete_adapter(deployed);
    throw;
  }
  model.delete_adapter(deployed);
}

void save_pretrained(PeftModel& model, const std::string& dir) {
  for (const auto& name : model.adapters())
    save_adapter(model, name == "default" ? dir : (fs::path(dir) / name).string(), name);
}

std::shared_ptr<methods::MethodConfig> read_adapter_config(const std::string& dir) {
  const auto path = (fs::path(dir) / kConfigFile).string();
  PEFT_CHECK(fs::exists(path), kC, "{}: missing {} (is '{}' an adapter directory?)", dir, kConfigFile, dir);
  return methods::parse_config_file(path);
}

namespace {

/// The config fields that decide an adapter's tensors and what they do.
nlohmann::json shaping_fields(const methods::MethodConfig& config) {
  nlohmann::json j = config.to_json();
  for (const char* k : {"base_model_name_or_path", "revision", "inference_mode"}) j.erase(k);
  return j;
}

/// Each of the adapter's tensors with the file key that fills it. A key may come in its other
/// spelling (HF's "<layer>.base_layer.bias" or this library's earlier "<layer>.bias"). Every name
/// and shape is checked against the file's header; nothing is read.
std::vector<std::pair<at::Tensor, std::string>> match_adapter_tensors(PeftModel& model, const std::string& adapter,
                                                                      const safetensors::File& file,
                                                                      const std::string& weights_path,
                                                                      const std::string& method) {
  auto expected = model.adapter_state_dict(adapter);
  for (const auto& t : file.tensors()) {
    const std::string alias = model.checkpoint_key_alias(adapter, t.name);
    PEFT_CHECK(expected.count(t.name) || (!alias.empty() && expected.count(alias)), kC,
               "{}: unexpected tensor '{}' (the config's {} adapter has no such tensor)", weights_path, t.name, method);
  }
  std::vector<std::pair<at::Tensor, std::string>> out;
  for (auto& [expected_key, target] : expected) {
    std::string key = expected_key;
    if (!file.contains(key)) {
      const std::string alias = model.checkpoint_key_alias(adapter, key);
      if (!alias.empty() && file.contains(alias)) key = alias;
    }
    PEFT_CHECK(file.contains(key), kC, "{}: missing tensor '{}' (expected shape {})", weights_path, key,
               c10::str(target.sizes()));
    const auto& shape = file.info(key).shape;
    PEFT_CHECK(target.sizes() == c10::IntArrayRef(shape), kC, "{}: tensor '{}' has shape {}, expected {}", weights_path,
               key, c10::str(c10::IntArrayRef(shape)), c10::str(target.sizes()));
    out.emplace_back(target, key);
  }
  return out;
}

void hotswap_adapter(PeftModel& model, const methods::MethodConfig& config, const safetensors::File& file,
                     const std::string& weights_path, const std::string& adapter) {
  PEFT_CHECK(model.has_adapter(adapter), kC, "hotswap: no adapter named '{}' to load {} into", adapter, weights_path);
  PEFT_CHECK(!model.merged(), kC, "hotswap: adapter '{}' is merged; unmerge it first", adapter);
  const auto have = shaping_fields(model.adapter_config(adapter)), want = shaping_fields(config);
  for (const auto& [key, value] : want.items())
    PEFT_CHECK(have.contains(key) && have[key] == value, kC,
               "hotswap: {} has field '{}' = {}, adapter '{}' has {}: a delta of another shape or scale needs its own slot",
               weights_path, key, value.dump(), adapter, have.contains(key) ? have[key].dump() : "no such field");
  for (const auto& [key, value] : have.items())
    PEFT_CHECK(want.contains(key), kC, "hotswap: {} lacks field '{}' that adapter '{}' has", weights_path, key, adapter);
  // Every name and shape is checked against the file's header before the first tensor changes.
  const auto matched = match_adapter_tensors(model, adapter, file, weights_path, config.method());
  torch::NoGradGuard no_grad;
  for (const auto& [target, key] : matched) target.copy_(file.load(key));
}

}  // namespace

void load_adapter(PeftModel& model, const std::string& dir, const std::string& adapter, const LoadOptions& options) {
  auto config = read_adapter_config(dir);
  const auto weights_path = (fs::path(dir) / kWeightsFile).string();
  PEFT_CHECK(fs::exists(weights_path), kC, "{}: missing {}", dir, kWeightsFile);
  safetensors::File file(weights_path);

  const auto& meta = file.metadata();
  auto fp = meta.find("peft_cpp_base_fingerprint");
  if (fp != meta.end() && fp->second != model.base_fingerprint()) {
    const std::string msg = fmt::format(
        "{}: this delta was trained on a different base model (base fingerprint {} recorded, {} loaded); "
        "check the model directory",
        dir, fp->second, model.base_fingerprint());
    PEFT_CHECK(options.allow_base_mismatch, kC, "{} (allow_base_mismatch overrides)", msg);
    log::warn("{}", msg);
  }

  if (options.hotswap) {
    hotswap_adapter(model, *config, file, weights_path, adapter);
    return;
  }
  config->common.inference_mode = !options.is_trainable;
  model.add_adapter_without_data(adapter, *config);
  try {
    // A delta holds a prompt encoder's output only: the encoder (if the config builds one) goes.
    if (auto encoder = model.prompt_encoder(adapter)) encoder->eject();
    const auto matched = match_adapter_tensors(model, adapter, file, weights_path, config->method());
    torch::NoGradGuard no_grad;
    for (const auto& [target, key] : matched) target.copy_(file.load(key));
  } catch (...) {
    model.delete_adapter(adapter);
    throw;
  }
  model.set_trainable(adapter, options.is_trainable);
}

std::vector<std::pair<std::string, std::string>> parse_adapter_specs(const std::vector<std::string>& specs) {
  std::vector<std::pair<std::string, std::string>> named;
  for (const auto& spec : specs) {
    const auto eq = spec.find('=');
    std::string name = eq == std::string::npos ? "default" : spec.substr(0, eq);
    std::string dir = eq == std::string::npos ? spec : spec.substr(eq + 1);
    PEFT_CHECK(!name.empty() && !dir.empty(), kC, "adapter '{}': expected NAME=DIR or DIR", spec);
    for (const auto& [n, d] : named)
      PEFT_CHECK(n != name, kC, "adapter name '{}' is given twice ({} and {}); name each NAME=DIR", name, d, dir);
    named.emplace_back(std::move(name), std::move(dir));
  }
  return named;
}

std::vector<std::string> load_adapters(PeftModel& model, const std::vector<std::string>& specs,
                                       const LoadOptions& options) {
  std::vector<std::string> names;
  for (const auto& [name, dir] : parse_adapter_specs(specs)) {
    load_adapter(model, dir, name, options);
    names.push_back(name);
  }
  return names;
}

}  // namespace peft::checkpoint
