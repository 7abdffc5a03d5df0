#include "peft/models/load.h"

#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"
#include "peft/core/safetensors.h"
#include "peft/models/gpt2.h"

namespace peft::models {
namespace fs = std::filesystem;
namespace {

constexpr const char* kComponent = "models";

std::map<std::string, ModelFactory>& factories() {
  static std::map<std::string, ModelFactory> f;
  return f;
}

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

void register_builtins() {
  static std::once_flag once;
  std::call_once(once, [] {
    factories()["gpt2"] = [](const nlohmann::json& c) {
      return std::make_shared<GPT2LMHeadModel>(GPT2Config::from_json(c));
    };
  });
}

/// Checkpoint tensor name -> the safetensors file holding it.
std::map<std::string, std::string> weight_files(const std::string& dir) {
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::map<std::string, std::string> out;
  if (fs::exists(single)) {
    safetensors::File file(single.string());
    for (const auto& t : file.tensors()) out[t.name] = single.string();
    return out;
  }
  PEFT_CHECK(fs::exists(index), kComponent,
             "{}: no model.safetensors or model.safetensors.index.json (PyTorch .bin checkpoints are not "
             "supported; convert them to safetensors)",
             dir);
  auto j = core::read_json_file(index.string());
  PEFT_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), kComponent,
             "{}: expected an object 'weight_map'", index.string());
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    PEFT_CHECK(it.value().is_string(), kComponent, "{}: weight_map['{}'] must be a file name", index.string(),
               it.key());
    const std::string shard = it.value().get<std::string>();
    PEFT_CHECK(fs::path(shard).filename() == fs::path(shard), kComponent,
               "{}: shard name '{}' must be a plain file name", index.string(), shard);
    out[it.key()] = (fs::path(dir) / shard).string();
  }
  return out;
}

}  // namespace

void register_model_type(const std::string& model_type, ModelFactory factory) {
  register_builtins();
  std::lock_guard<std::mutex> lock(registry_mutex());
  factories()[model_type] = std::move(factory);
}

std::vector<std::string> registered_model_types() {
  register_builtins();
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<std::string> out;
  for (const auto& kv : factories()) out.push_back(kv.first);
  return out;
}

std::shared_ptr<PretrainedModel> create_model(const nlohmann::json& config) {
  register_builtins();
  PEFT_CHECK(config.is_object() && config.contains("model_type") && config["model_type"].is_string(),
             kComponent, "config.json: expected a string 'model_type'");
  const auto type = config["model_type"].get<std::string>();
  ModelFactory factory;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = factories().find(type);
    if (it != factories().end()) factory = it->second;
  }
  if (!factory) {
    auto known = registered_model_types();
    fail(kComponent, fmt::format("config.json: unsupported model_type '{}' (supported: {})", type,
                                 fmt::join(known, ", ")));
  }
  return factory(config);
}

std::shared_ptr<PretrainedModel> load_pretrained(const std::string& dir, const LoadOptions& options) {
  const fs::path cfg = fs::path(dir) / "config.json";
  PEFT_CHECK(fs::is_directory(dir), kComponent, "'{}' is not a model directory", dir);
  PEFT_CHECK(fs::exists(cfg), kComponent, "{}: missing config.json", dir);
  auto model = create_model(core::read_json_file(cfg.string()));
  load_weights(*model, dir, options);
  return model;
}

void load_weights(PretrainedModel& model, const std::string& dir, const LoadOptions& options) {
  auto files = weight_files(dir);
  auto params = model.named_parameters(true);
  auto buffers = model.named_buffers(true);
  std::map<std::string, at::Tensor> expected;
  for (const auto& p : params) expected[p.key()] = p.value();
  for (const auto& b : buffers) expected[b.key()] = b.value();
  const auto tied = model.tied_weights();
  const std::string prefix = model.base_model_prefix();

  // Resolve checkpoint names onto ours: exact, or a bare backbone checkpoint missing the prefix.
  std::map<std::string, std::string> source_of;  // our name -> checkpoint name
  std::vector<std::string> extra;
  for (const auto& [key, file] : files) {
    if (expected.count(key)) {
      source_of[key] = key;
    } else if (!prefix.empty() && expected.count(prefix + "." + key)) {
      source_of[prefix + "." + key] = key;
    } else if (!tied.count(key) && !model.ignorable_checkpoint_key(key)) {
      extra.push_back(key);
    }
  }
  if (!extra.empty()) {
    std::string msg = fmt::format("{}: {} unexpected tensor(s) in the checkpoint: {}", dir, extra.size(),
                                  fmt::join(extra.begin(), extra.begin() + std::min<size_t>(extra.size(), 8), ", "));
    PEFT_CHECK(options.allow_extra_tensors, kComponent, "{} (allow extra tensors to ignore them)", msg);
    log::warn("{} (ignored)", msg);
  }

  std::map<std::string, std::unique_ptr<safetensors::File>> open;
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : expected) {
    auto src = source_of.find(name);
    PEFT_CHECK(src != source_of.end(), kComponent, "{}: missing tensor '{}' (expected shape {})", dir, name,
               c10::str(target.sizes()));
    const std::string& file = files.at(src->second);
    auto& f = open[file];
    if (!f) {
      PEFT_CHECK(fs::exists(file), kComponent, "{}: shard '{}' listed in the index does not exist", dir, file);
      f = std::make_unique<safetensors::File>(file);
    }
    PEFT_CHECK(f->contains(src->second), kComponent, "{}: tensor '{}' is listed in the index but missing from {}",
               dir, src->second, file);
    at::Tensor value = f->load(src->second);
    PEFT_CHECK(value.sizes() == target.sizes(), kComponent,
               "{}: tensor '{}' has shape {} in {}, expected {}", dir, name, c10::str(value.sizes()), file,
               c10::str(target.sizes()));
    if (value.is_floating_point() && options.dtype) value = value.to(*options.dtype);
    target.set_data(value.to(options.device));
  }
}

}  // namespace peft::models
