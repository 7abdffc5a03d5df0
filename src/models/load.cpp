#include "peft/models/load.h"

#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"
#include "peft/core/memory.h"
#include "peft/core/safetensors.h"
#include "peft/core/strings.h"
#include "peft/models/bert.h"
#include "peft/models/gpt2.h"
#include "peft/models/llama.h"
#include "peft/models/t5.h"
#include "peft/models/vit.h"
#include "init_weights.h"
#include "peft/nn/module_dtype.h"

namespace peft::models {
namespace fs = std::filesystem;
namespace {

constexpr const char* kComponent = "models";

struct Architecture {
  std::string name;
  std::string task;
  ModelFactory factory;
};

std::map<std::string, std::vector<Architecture>>& registry() {
  static std::map<std::string, std::vector<Architecture>> r;
  return r;
}

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

template <class Model, class Config>
ModelFactory make() {
  return [](const nlohmann::json& c) { return std::make_shared<Model>(Config::from_json(c)); };
}

void add(const std::string& type, const std::string& arch, const std::string& task, ModelFactory f) {
  auto& list = registry()[type];
  for (auto& a : list)
    if (a.name == arch) {
      a = {arch, task, std::move(f)};
      return;
    }
  list.push_back({arch, task, std::move(f)});
}

void register_builtins() {
  static std::once_flag once;
  std::call_once(once, [] {
    add("gpt2", "GPT2LMHeadModel", "causal_lm", make<GPT2LMHeadModel, GPT2Config>());
    add("gpt2", "GPT2ForSequenceClassification", "sequence_classification",
        make<GPT2ForSequenceClassification, GPT2Config>());
    add("gpt2", "GPT2Model", "feature_extraction", make<GPT2ForFeatureExtraction, GPT2Config>());
    for (const std::string type : {"bert", "roberta"}) {
      const std::string prefix = type == "bert" ? "Bert" : "Roberta";
      add(type, prefix + "Model", "feature_extraction", make<BertForFeatureExtraction, BertConfig>());
      add(type, prefix + "ForSequenceClassification", "sequence_classification",
          make<BertForSequenceClassification, BertConfig>());
    }
    add("llama", "LlamaForCausalLM", "causal_lm", make<LlamaForCausalLM, LlamaConfig>());
    add("llama", "LlamaForSequenceClassification", "sequence_classification",
        make<LlamaForSequenceClassification, LlamaConfig>());
    add("llama", "LlamaModel", "feature_extraction", make<LlamaForFeatureExtraction, LlamaConfig>());
    add("vit", "ViTForImageClassification", "image_classification", make<ViTForImageClassification, ViTConfig>());
    add("vit", "ViTModel", "feature_extraction", make<ViTForFeatureExtraction, ViTConfig>());
    add("t5", "T5ForConditionalGeneration", "seq2seq_lm", make<T5ForConditionalGeneration, T5Config>());
    add("t5", "T5EncoderModel", "feature_extraction", make<T5EncoderModel, T5Config>());
    add("t5", "T5Model", "feature_extraction", make<T5Model, T5Config>());
  });
}

std::string describe(const std::vector<Architecture>& list) {
  std::vector<std::string> out;
  for (const auto& a : list) out.push_back(fmt::format("{} ({})", a.name, a.task));
  return fmt::format("{}", fmt::join(out, ", "));
}

/// The architecture config.json names, or "" when it names none.
std::string named_architecture(const nlohmann::json& config) {
  if (!config.contains("architectures") || !config["architectures"].is_array() || config["architectures"].empty() ||
      !config["architectures"][0].is_string())
    return {};
  return config["architectures"][0].get<std::string>();
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

void load_weights_into(PretrainedModel& model, const std::string& dir, const LoadOptions& options, bool initialized);

}  // namespace

void register_architecture(const std::string& model_type, const std::string& architecture, const std::string& task,
                           ModelFactory factory) {
  register_builtins();
  PEFT_CHECK(!model_type.empty() && !architecture.empty() && factory, kComponent,
             "register_architecture: model_type, architecture and factory must be given");
  std::lock_guard<std::mutex> lock(registry_mutex());
  add(model_type, architecture, task, std::move(factory));
}

void register_model_type(const std::string& model_type, ModelFactory factory) {
  register_architecture(model_type, model_type, "custom", std::move(factory));
}

std::vector<std::string> registered_model_types() {
  register_builtins();
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<std::string> out;
  for (const auto& kv : registry()) out.push_back(kv.first);
  return out;
}

std::vector<std::string> registered_architectures(const std::string& model_type) {
  register_builtins();
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<std::string> out;
  auto it = registry().find(model_type);
  if (it != registry().end())
    for (const auto& a : it->second) out.push_back(fmt::format("{} ({})", a.name, a.task));
  return out;
}

std::string canonical_task(const std::string& task) {
  static const std::map<std::string, std::string> aliases = {
      {"causal_lm", "causal_lm"},
      {"CAUSAL_LM", "causal_lm"},
      {"sequence_classification", "sequence_classification"},
      {"SEQ_CLS", "sequence_classification"},
      {"image_classification", "image_classification"},
      {"seq2seq_lm", "seq2seq_lm"},
      {"SEQ_2_SEQ_LM", "seq2seq_lm"},
      {"feature_extraction", "feature_extraction"},
      {"FEATURE_EXTRACTION", "feature_extraction"},
      {"custom", "custom"}};
  auto it = aliases.find(task);
  PEFT_CHECK(it != aliases.end(), kComponent,
             "unknown task '{}' (expected causal_lm, sequence_classification, image_classification, seq2seq_lm or "
             "feature_extraction; or HF PEFT's CAUSAL_LM, SEQ_CLS, SEQ_2_SEQ_LM, FEATURE_EXTRACTION)",
             task);
  return it->second;
}

std::string generation_task(const nlohmann::json& config) {
  const bool encoder_decoder =
      config.is_object() && ((config.contains("is_encoder_decoder") && config["is_encoder_decoder"].is_boolean() &&
                              config["is_encoder_decoder"].get<bool>()) ||
                             (config.contains("model_type") && config["model_type"] == "t5"));
  return encoder_decoder ? "seq2seq_lm" : "causal_lm";
}

std::shared_ptr<PretrainedModel> create_model(const nlohmann::json& config, const std::string& task,
                                              std::optional<int64_t> num_labels) {
  register_builtins();
  PEFT_CHECK(config.is_object() && config.contains("model_type") && config["model_type"].is_string(),
             kComponent, "config.json: expected a string 'model_type'");
  const auto type = config["model_type"].get<std::string>();
  std::vector<Architecture> list;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(type);
    if (it != registry().end()) list = it->second;
  }
  if (list.empty()) {
    std::vector<std::string> known;
    for (const auto& kv : registry()) known.push_back(kv.first);
    fail(kComponent, fmt::format("config.json: unsupported model_type '{}' (supported: {})", type,
                                 fmt::join(known, ", ")));
  }
  const Architecture* chosen = &list.front();
  if (!task.empty()) {
    const std::string wanted = canonical_task(task);
    chosen = nullptr;
    for (const auto& a : list)
      if (a.task == wanted) chosen = &a;
    PEFT_CHECK(chosen, kComponent, "model_type '{}' has no {} head (available: {})", type, wanted, describe(list));
  } else if (const auto named = named_architecture(config); !named.empty()) {
    const Architecture* match = nullptr;
    for (const auto& a : list)
      if (a.name == named) match = &a;
    if (match) chosen = match;
    else
      log::info("config.json names architecture '{}', which is not supported; building {} (available: {})", named,
                chosen->name, describe(list));
  }
  nlohmann::json cfg = config;
  if (num_labels) {
    PEFT_CHECK(*num_labels >= 1, kComponent, "num_labels must be at least 1, found {}", *num_labels);
    cfg["num_labels"] = *num_labels;
    if (cfg.contains("id2label") && cfg["id2label"].is_object() &&
        static_cast<int64_t>(cfg["id2label"].size()) != *num_labels) {
      cfg.erase("id2label");
      cfg.erase("label2id");
    }
  }
  return chosen->factory(cfg);
}

std::shared_ptr<PretrainedModel> create_model_on(const nlohmann::json& config, c10::Device device,
                                                 std::optional<c10::ScalarType> dtype, const std::string& task,
                                                 const std::optional<QuantizationConfig>& quantization) {
  std::shared_ptr<PretrainedModel> model;
  {
    WeightsWillBeLoaded skip_random_init;  // the host tensors stay untouched (no resident pages)
    model = create_model(config, task);
  }
  if (quantization) {
    // Layer by layer: draw one linear's weight where it will live, quantize it, drop it.
    const double std = config.value("initializer_range", 0.02);
    torch::NoGradGuard no_grad;
    for (auto& [name, lin] : layers_to_quantize(*model, *quantization)) {
      at::Tensor w = torch::empty(lin->weight.sizes(), lin->weight.options().device(device).dtype(dtype.value_or(
                                                          lin->weight.scalar_type())));
      w.normal_(0.0, std);
      lin->quantize_from(w, quantization->type, quantization->double_quant, quantization->compute_dtype);
    }
    core::release_free_memory();
    if (!dtype) dtype = quantization->compute_dtype;
  }
  model->to(device);
  if (dtype) nn::to_floating_dtype(*model, *dtype);
  model->init_weights();  // quantized layers hold empty weights: only their biases are set
  if (quantization)
    for (auto& [name, lin] : model->adaptable_linears())
      if (lin->quantized() && lin->bias.defined()) lin->bias.set_data(lin->bias.to(lin->compute_dtype()));
  return model;
}

std::shared_ptr<PretrainedModel> load_pretrained(const std::string& dir, const LoadOptions& options) {
  const fs::path cfg = fs::path(dir) / "config.json";
  PEFT_CHECK(fs::is_directory(dir), kComponent, "'{}' is not a model directory", dir);
  PEFT_CHECK(fs::exists(cfg), kComponent, "{}: missing config.json", dir);
  std::shared_ptr<PretrainedModel> model;
  {
    WeightsWillBeLoaded skip_random_init;
    model = create_model(core::read_json_file(cfg.string()), options.task, options.num_labels);
  }
  load_weights_into(*model, dir, options, /*initialized=*/false);
  return model;
}

void load_weights(PretrainedModel& model, const std::string& dir, const LoadOptions& options) {
  load_weights_into(model, dir, options, /*initialized=*/true);
}

namespace {
void load_weights_into(PretrainedModel& model, const std::string& dir, const LoadOptions& options, bool initialized) {
  auto files = weight_files(dir);
  std::map<std::string, at::Tensor> expected;
  for (const auto& p : model.named_parameters(true)) expected[p.key()] = p.value();
  for (const auto& b : model.named_buffers(true)) expected[b.key()] = b.value();
  const auto tied = model.tied_weights();
  const std::string prefix = model.base_model_prefix();
  std::string checkpoint_arch;
  if (const fs::path cfg = fs::path(dir) / "config.json"; fs::exists(cfg))
    checkpoint_arch = named_architecture(core::read_json_file(cfg.string()));
  const bool other_head = !checkpoint_arch.empty() && checkpoint_arch != model.architecture();

  // Resolve checkpoint names onto ours: exact; a bare backbone checkpoint lacking our prefix; a
  // task checkpoint carrying a prefix our bare backbone lacks.
  std::map<std::string, std::string> source_of;  // our name -> checkpoint name
  std::vector<std::string> extra, dropped;
  for (const auto& [key, file] : files) {
    if (expected.count(key)) {
      source_of[key] = key;
    } else if (!prefix.empty() && expected.count(prefix + "." + key)) {
      source_of[prefix + "." + key] = key;
    } else if (!prefix.empty() && core::is_under(key, prefix) && expected.count(key.substr(prefix.size() + 1))) {
      source_of[key.substr(prefix.size() + 1)] = key;
    } else if (tied.count(key) || model.ignorable_checkpoint_key(key)) {
      continue;
    } else if (other_head && !(prefix.empty() || core::is_under(key, prefix))) {
      dropped.push_back(key);  // the head of the checkpoint's own architecture
    } else {
      extra.push_back(key);
    }
  }
  auto some = [](const std::vector<std::string>& v) {
    return fmt::format("{}{}", fmt::join(v.begin(), v.begin() + std::min<size_t>(v.size(), 8), ", "),
                       v.size() > 8 ? ", ..." : "");
  };
  if (!extra.empty()) {
    std::string msg = fmt::format("{}: {} unexpected tensor(s) in the checkpoint: {}", dir, extra.size(), some(extra));
    PEFT_CHECK(options.allow_extra_tensors, kComponent, "{} (allow extra tensors to ignore them)", msg);
    log::warn("{} (ignored)", msg);
  }
  if (!dropped.empty())
    log::info("{}: dropped the {} head ({}) to build {}", dir, checkpoint_arch, some(dropped), model.architecture());

  std::vector<std::string> fresh;
  std::map<std::string, std::vector<std::string>> by_file;  // shard -> our names it holds
  for (auto& [name, target] : expected) {
    auto src = source_of.find(name);
    if (src != source_of.end()) {
      by_file[files.at(src->second)].push_back(name);
      continue;
    }
    bool in_head = false;
    for (const auto& h : model.head_modules()) in_head = in_head || core::is_under(name, h);
    PEFT_CHECK(in_head, kComponent, "{}: missing tensor '{}' (expected shape {})", dir, name, c10::str(target.sizes()));
    fresh.push_back(name);
  }
  // A model built without its random init gets it now, when a new head needs it.
  if (!initialized && !fresh.empty()) model.init_weights();

  // Quantized storage: the linears' weights are quantized straight from the checkpoint tensors.
  std::map<std::string, nn::AdaptableLinear> quantize_into;  // weight name -> its layer
  std::optional<c10::ScalarType> dtype = options.dtype;
  if (options.quantization) {
    if (!dtype) dtype = options.quantization->compute_dtype;
    for (auto& [name, lin] : layers_to_quantize(model, *options.quantization))
      if (source_of.count(name + ".weight")) {  // a new head trains: never quantized
        PEFT_CHECK(!lin->quantized(), kComponent, "{}: layer '{}' is already quantized; load into an unquantized model",
                   dir, name);
        quantize_into.emplace(name + ".weight", lin);
      }
  }

  // One shard at a time, each closed once read: resident memory stays the weights plus one
  // shard's mapped pages.
  std::optional<c10::ScalarType> loaded_dtype = dtype;
  torch::NoGradGuard no_grad;
  for (const auto& [file, names] : by_file) {
    PEFT_CHECK(fs::exists(file), kComponent, "{}: shard '{}' listed in the index does not exist", dir, file);
    safetensors::File f(file);
    for (const auto& name : names) {
      at::Tensor& target = expected.at(name);
      const std::string& key = source_of.at(name);
      PEFT_CHECK(f.contains(key), kComponent, "{}: tensor '{}' is listed in the index but missing from {}", dir, key,
                 file);
      const auto& info = f.info(key);
      PEFT_CHECK(c10::IntArrayRef(info.shape) == target.sizes(), kComponent,
                 "{}: tensor '{}' has shape {} in {}, expected {}", dir, key, c10::str(c10::IntArrayRef(info.shape)),
                 file, c10::str(target.sizes()));
      at::Tensor value = f.load(key);
      if (auto q = quantize_into.find(name); q != quantize_into.end()) {
        PEFT_CHECK(value.is_floating_point(), kComponent, "{}: tensor '{}' in {} is {}, expected a floating-point weight to quantize",
                   dir, key, file, c10::toString(value.scalar_type()));
        const auto& qc = *options.quantization;
        q->second->quantize_from(value.to(options.device), qc.type, qc.double_quant, qc.compute_dtype);
        continue;
      }
      if (value.is_floating_point() && dtype) value = value.to(*dtype);
      if (value.is_floating_point() && !loaded_dtype) loaded_dtype = value.scalar_type();
      target.set_data(value.to(options.device));
    }
    if (!quantize_into.empty()) core::release_free_memory();  // the quantizer's scratch, shard by shard
  }
  // Biases of quantized layers compute with them (they were read in the model's dtype).
  for (auto& [weight_name, lin] : quantize_into)
    if (lin->bias.defined()) lin->bias.set_data(lin->bias.to(lin->compute_dtype()));
  // A new head follows the checkpoint's dtype and the requested device.
  for (const auto& name : fresh) {
    at::Tensor& t = expected.at(name);
    t.set_data(t.to(options.device, t.is_floating_point() && loaded_dtype ? *loaded_dtype : t.scalar_type()));
  }
  model.set_newly_initialized({fresh.begin(), fresh.end()});
  if (!fresh.empty())
    log::warn("{}: {} is newly initialized (not in the checkpoint): {}; train it (e.g. modules_to_save) before use",
              dir, model.architecture(), some(fresh));
}
}  // namespace

ModelGeometry model_geometry(const nlohmann::json& config) {
  PEFT_CHECK(config.is_object() && config.contains("model_type") && config["model_type"].is_string(), kComponent,
             "config.json: expected an object with a string model_type");
  const auto type = config["model_type"].get<std::string>();
  if (type == "gpt2") return GPT2Config::from_json(config).geometry();
  if (type == "bert" || type == "roberta") return BertConfig::from_json(config).geometry();
  if (type == "llama") return LlamaConfig::from_json(config).geometry();
  if (type == "vit") return ViTConfig::from_json(config).geometry();
  if (type == "t5") return T5Config::from_json(config).geometry();
  // A registered custom backbone knows its geometry only once built.
  return create_model(config)->geometry();
}

}  // namespace peft::models
