#include "peft/train/run_config.h"

#include <filesystem>

#include <torch/torch.h>

#include "core/json_fields.h"
#include "peft/core/dtype.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/data/idx_images.h"
#include "peft/data/seq2seq.h"
#include "peft/data/span_corruption.h"
#include "peft/data/subset.h"
#include "peft/data/text_blocks.h"
#include "peft/data/text_classification.h"
#include "peft/nn/module_dtype.h"
#include "peft/privacy/private_gradient.h"

namespace peft::train {
namespace {
constexpr const char* kC = "config";
using core::get_or;
}  // namespace

void apply_override(nlohmann::json& config, const std::string& o, const std::string& where) {
  const auto eq = o.find('=');
  PEFT_CHECK(eq != std::string::npos && eq > 0, kC, "--set '{}': expected key.path=value", o);
  const std::string key = o.substr(0, eq), raw = o.substr(eq + 1);
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(raw);
  } catch (const nlohmann::json::exception&) {
    value = raw;  // a bare string
  }
  nlohmann::json* node = &config;
  size_t from = 0;
  for (size_t dot = key.find('.');; dot = key.find('.', from)) {
    const std::string part = key.substr(from, dot == std::string::npos ? std::string::npos : dot - from);
    PEFT_CHECK(!part.empty(), kC, "--set '{}': empty key segment", o);
    PEFT_CHECK(node->is_object() || node->is_null(), kC, "--set '{}': '{}' is not an object in {}", o, part, where);
    if (dot == std::string::npos) {
      (*node)[part] = value;
      break;
    }
    node = &(*node)[part];
    from = dot + 1;
  }
}

nlohmann::json load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  nlohmann::json j = core::read_json_file(path);
  for (const auto& o : overrides) apply_override(j, o, path);
  return j;
}

models::LoadOptions load_options_from_json(const nlohmann::json& config, const std::string& where) {
  models::LoadOptions load;
  load.task = get_or<std::string>(config, "task", "", kC, where);
  if (config.contains("num_labels") && !config["num_labels"].is_null())
    load.num_labels = get_or<int64_t>(config, "num_labels", 0, kC, where);
  load.device = c10::Device(get_or<std::string>(config, "device", "cpu", kC, where));
  load.dtype = core::dtype_from_name(get_or<std::string>(config, "dtype", "", kC, where), where + ": dtype");
  if (config.contains("quantization") && !config["quantization"].is_null())
    load.quantization = models::QuantizationConfig::from_json(config["quantization"], where);
  return load;
}

RunData load_run_data(const nlohmann::json& d, const std::string& tok_dir, const std::string& where, bool need_train) {
  const std::string dw = where + " data";
  core::reject_unknown_keys(d, {"kind", "train", "eval", "max_length", "text_field", "label_field", "skip_bad_records",
                                "block_size", "max_tokens", "train_images", "train_labels", "eval_images",
                                "eval_labels", "image_size", "channels", "max_value", "validation", "validation_images",
                                "validation_labels", "validation_fraction", "validation_seed", "source_field", "target_field",
                                "source_prefix", "max_source_length", "max_target_length", "noise_density",
                                "mean_noise_span_length", "sentinel_first", "sentinels", "span_seed", "variants"},
                            kC, dw);
  RunData parts;
  const std::string kind = get_or<std::string>(d, "kind", "", kC, dw);
  if (kind == "jsonl_classification" || kind == "text" || kind == "seq2seq_jsonl" || kind == "span_corruption")
    parts.tokenizer = tokenizers::load_tokenizer(tok_dir);
  const std::string train_path = get_or<std::string>(d, kind == "idx" ? "train_images" : "train", "", kC, dw);
  const std::string eval_path = get_or<std::string>(d, kind == "idx" ? "eval_images" : "eval", "", kC, dw);
  const std::string validation_key = kind == "idx" ? "validation_images" : "validation";
  const std::string validation_path = get_or<std::string>(d, validation_key.c_str(), "", kC, dw);
  const double validation_fraction = get_or<double>(d, "validation_fraction", 0.0, kC, dw);
  PEFT_CHECK(validation_path.empty() || validation_fraction == 0.0, kC,
             "{}: data.{} and data.validation_fraction both name a validation set; give one", where, validation_key);
  PEFT_CHECK(validation_fraction == 0.0 || (validation_fraction > 0.0 && validation_fraction < 1.0), kC,
             "{}: data.validation_fraction must be in (0, 1) (the share of the training set held out), found {}",
             where, validation_fraction);
  PEFT_CHECK(!need_train || !train_path.empty(), kC, "{}: data.{} is required", where,
             kind == "idx" ? "train_images" : "train");
  if (kind == "jsonl_classification") {
    data::TextClassificationOptions o;
    o.max_length = get_or<int64_t>(d, "max_length", o.max_length, kC, where);
    o.text_field = get_or<std::string>(d, "text_field", o.text_field, kC, where);
    o.label_field = get_or<std::string>(d, "label_field", o.label_field, kC, where);
    o.skip_bad_records = get_or<bool>(d, "skip_bad_records", false, kC, where);
    const auto& sp = parts.tokenizer->special();
    o.pad_id = sp.pad.value_or(sp.eos.value_or(0));
    if (!train_path.empty()) {
      auto train = std::make_shared<data::TextClassificationDataset>(train_path, parts.tokenizer, o);
      o.labels = train->labels();  // the eval set uses the training set's label ids
      parts.train = train;
    }
    if (!eval_path.empty()) parts.eval = std::make_shared<data::TextClassificationDataset>(eval_path, parts.tokenizer, o);
    if (!validation_path.empty())
      parts.validation = std::make_shared<data::TextClassificationDataset>(validation_path, parts.tokenizer, o);
    if (const auto& labelled = parts.train ? parts.train : parts.eval)
      parts.num_labels = static_cast<int64_t>(labelled->labels().size());
  } else if (kind == "text") {
    data::TextBlocksOptions o;
    o.block_size = get_or<int64_t>(d, "block_size", o.block_size, kC, where);
    o.max_tokens = get_or<int64_t>(d, "max_tokens", 0, kC, where);
    if (!train_path.empty()) parts.train = std::make_shared<data::TextBlocksDataset>(train_path, parts.tokenizer, o);
    if (!eval_path.empty()) parts.eval = std::make_shared<data::TextBlocksDataset>(eval_path, parts.tokenizer, o);
    if (!validation_path.empty())
      parts.validation = std::make_shared<data::TextBlocksDataset>(validation_path, parts.tokenizer, o);
  } else if (kind == "seq2seq_jsonl") {
    data::Seq2SeqOptions o;
    o.source_field = get_or<std::string>(d, "source_field", o.source_field, kC, where);
    o.target_field = get_or<std::string>(d, "target_field", o.target_field, kC, where);
    o.source_prefix = get_or<std::string>(d, "source_prefix", o.source_prefix, kC, where);
    o.max_source_length = get_or<int64_t>(d, "max_source_length", o.max_source_length, kC, where);
    o.max_target_length = get_or<int64_t>(d, "max_target_length", o.max_target_length, kC, where);
    o.skip_bad_records = get_or<bool>(d, "skip_bad_records", false, kC, where);
    const auto& sp = parts.tokenizer->special();
    o.pad_id = sp.pad.value_or(0);
    o.eos_id = sp.eos;
    auto make = [&](const std::string& path) { return std::make_shared<data::Seq2SeqDataset>(path, parts.tokenizer, o); };
    if (!train_path.empty()) parts.train = make(train_path);
    if (!eval_path.empty()) parts.eval = make(eval_path);
    if (!validation_path.empty()) parts.validation = make(validation_path);
  } else if (kind == "span_corruption") {
    data::SpanCorruptionOptions o;
    o.block_size = get_or<int64_t>(d, "block_size", o.block_size, kC, where);
    o.max_tokens = get_or<int64_t>(d, "max_tokens", 0, kC, where);
    o.noise_density = get_or<double>(d, "noise_density", o.noise_density, kC, where);
    o.mean_noise_span_length = get_or<double>(d, "mean_noise_span_length", o.mean_noise_span_length, kC, where);
    o.sentinel_first = get_or<int64_t>(d, "sentinel_first", parts.tokenizer->vocab_size(), kC, where);
    o.sentinels = get_or<int64_t>(d, "sentinels", o.sentinels, kC, where);
    o.seed = get_or<uint64_t>(d, "span_seed", 0, kC, where);
    o.variants = get_or<int64_t>(d, "variants", 1, kC, where);
    const auto eos = parts.tokenizer->special().eos;
    PEFT_CHECK(eos.has_value(), kC, "{}: data.kind span_corruption needs a tokenizer with an end-of-sequence token", where);
    o.eos_id = *eos;
    auto make = [&](const std::string& path) {
      return std::make_shared<data::SpanCorruptionDataset>(path, parts.tokenizer, o);
    };
    if (!train_path.empty()) parts.train = make(train_path);
    if (!eval_path.empty()) parts.eval = make(eval_path);
    if (!validation_path.empty()) parts.validation = make(validation_path);
    for (const auto& set : {parts.train, parts.eval, parts.validation})
      if (set) parts.max_token_id = std::static_pointer_cast<data::SpanCorruptionDataset>(set)->max_token_id();
  } else if (kind == "idx") {
    data::IdxImagesOptions o;
    o.image_size = get_or<int64_t>(d, "image_size", 0, kC, where);
    o.channels = get_or<int64_t>(d, "channels", 1, kC, where);
    o.max_value = get_or<double>(d, "max_value", 255.0, kC, where);
    if (!train_path.empty())
      parts.train = std::make_shared<data::IdxImagesDataset>(train_path, get_or<std::string>(d, "train_labels", "", kC, where), o);
    if (!eval_path.empty())
      parts.eval = std::make_shared<data::IdxImagesDataset>(eval_path, get_or<std::string>(d, "eval_labels", "", kC, where), o);
    if (!validation_path.empty())
      parts.validation = std::make_shared<data::IdxImagesDataset>(
          validation_path, get_or<std::string>(d, "validation_labels", "", kC, where), o);
  } else {
    fail(kC, fmt::format("{}: data.kind must be jsonl_classification, text, seq2seq_jsonl, span_corruption or idx, found '{}'", where, kind));
  }
  if (validation_fraction > 0.0 && parts.train) {
    // A text's blocks are consecutive: its tail keeps the validation text apart from the training text.
    auto split = data::split_validation(parts.train, validation_fraction,
                                        get_or<uint64_t>(d, "validation_seed", 0, kC, dw),
                                        kind == "text" || kind == "span_corruption" ? data::HoldOut::kTail : data::HoldOut::kRandom);
    parts.train = split.train;
    parts.validation = split.validation;
  }
  return parts;
}

namespace {
const std::vector<core::ConfigField<TrainerConfig>>& trainer_fields() {
  using core::field;
  using T = TrainerConfig;
  static const std::vector<core::ConfigField<T>> f = {
      field("max_steps", &T::max_steps),         field("batch_size", &T::batch_size),
      field("grad_accum", &T::grad_accum),       field("lr", &T::lr),
      field("weight_decay", &T::weight_decay),   field("beta1", &T::beta1),
      field("beta2", &T::beta2),                 field("eps", &T::eps),
      field("schedule", &T::schedule),           field("warmup_steps", &T::warmup_steps),
      field("max_grad_norm", &T::max_grad_norm), field("eval_every", &T::eval_every),
      field("eval_batches", &T::eval_batches),   field("log_every", &T::log_every),
      field("save_every", &T::save_every),       field("metric", &T::metric),
      field("early_stopping_patience", &T::early_stopping_patience),
      field("max_nonfinite", &T::max_nonfinite), field("progress", &T::progress),
      field("overwrite", &T::overwrite),         field("no_decay", &T::no_decay),
      field("flush_denormals", &T::flush_denormals),
      field("mixed_precision", &T::mixed_precision), field("loss_scaling", &T::loss_scaling),
      field("loss_scale_init", &T::loss_scale_init),
      field("loss_scale_growth_interval", &T::loss_scale_growth_interval)};
  return f;
}
}  // namespace

TrainerConfig trainer_config_from_json(const nlohmann::json& t, const std::string& tw) {
  TrainerConfig tc;
  core::read_fields(t, trainer_fields(), tc, kC, tw);
  return tc;
}

RunParts build_run(const nlohmann::json& config, const std::string& where, bool need_train) {
  core::reject_unknown_keys(config, {"model", "init", "task", "num_labels", "tokenizer", "method", "data", "trainer",
                                     "output_dir", "threads", "device", "dtype", "seed", "resume", "adapter",
                                     "delta_dtype", "save_dtype", "gradient_checkpointing", "quantization", "privacy"},
                            kC, where);
  RunParts parts;
  const std::string model_dir = get_or<std::string>(config, "model", "", kC, where);
  PEFT_CHECK(!model_dir.empty(), kC, "{}: 'model' (a Hugging Face model directory) is required", where);
  const std::string init = get_or<std::string>(config, "init", "pretrained", kC, where);
  PEFT_CHECK(init == "pretrained" || init == "config", kC,
             "{}: init must be \"pretrained\" (load weights) or \"config\" (random weights, for pretraining), found '{}'",
             where, init);
  const uint64_t seed = get_or<uint64_t>(config, "seed", 42, kC, where);
  torch::manual_seed(seed);
  models::LoadOptions load = load_options_from_json(config, where);

  // Data first: a classification set decides the label count.
  auto data = load_run_data(config.value("data", nlohmann::json::object()),
                            get_or<std::string>(config, "tokenizer", model_dir, kC, where), where, need_train);
  parts.tokenizer = data.tokenizer;
  parts.train = data.train;
  parts.eval = data.eval;
  parts.validation = data.validation;
  if (!load.num_labels) load.num_labels = data.num_labels;

  if (init == "pretrained") {
    parts.model = models::load_pretrained(model_dir, load);
  } else {
    const auto cfg_path = (std::filesystem::path(model_dir) / "config.json").string();
    parts.model = models::create_model(core::read_json_file(cfg_path), load.task, load.num_labels);
    if (load.quantization) models::quantize_model(*parts.model, *load.quantization);
    if (load.dtype) nn::to_floating_dtype(*parts.model, *load.dtype);
    parts.model->to(load.device);
  }

  // Ids the data introduces (span-corruption sentinels) must be rows of the model's embedding.
  const int64_t vocab = parts.model->geometry().vocab_size;
  PEFT_CHECK(!data.max_token_id || vocab <= 0 || *data.max_token_id < vocab, kC,
             "{}: the span-corruption sentinels reach id {}, but the model's vocab_size is {} (raise vocab_size or "
             "lower data.sentinel_first / data.sentinels)",
             where, data.max_token_id.value_or(0), vocab);

  parts.delta_dtype = core::dtype_from_name(get_or<std::string>(config, "delta_dtype", "", kC, where), where + ": delta_dtype");
  parts.save_dtype = core::dtype_from_name(get_or<std::string>(config, "save_dtype", "", kC, where), where + ": save_dtype");
  if (get_or<bool>(config, "gradient_checkpointing", false, kC, where)) parts.model->set_gradient_checkpointing(true);

  parts.trainer = trainer_config_from_json(config.value("trainer", nlohmann::json::object()), where + " trainer");
  parts.trainer.seed = seed;
  parts.trainer.device = load.device;
  parts.trainer.output_dir = get_or<std::string>(config, "output_dir", "", kC, where);
  if (config.contains("privacy") && !config["privacy"].is_null())
    parts.trainer.privacy = privacy_config_from_json(config["privacy"], where + " privacy");
  return parts;
}

privacy::DpSgdConfig privacy_config_from_json(const nlohmann::json& p, const std::string& where) {
  PEFT_CHECK(p.is_object(), kC, "{}: expected an object like {{\"target_epsilon\": 8, \"delta\": 1e-5, \"max_grad_norm\": 1.0}}",
             where);
  core::reject_unknown_keys(p, {"target_epsilon", "noise_multiplier", "delta", "max_grad_norm", "sampling", "noise_seed",
                             "per_sample_gradients", "max_physical_batch"}, kC,
                            where);
  privacy::DpSgdConfig c;
  c.max_grad_norm = get_or<double>(p, "max_grad_norm", c.max_grad_norm, kC, where);
  c.delta = get_or<double>(p, "delta", c.delta, kC, where);
  c.sampling = get_or<std::string>(p, "sampling", c.sampling, kC, where);
  if (p.contains("noise_multiplier")) c.noise_multiplier = get_or<double>(p, "noise_multiplier", 0.0, kC, where);
  if (p.contains("target_epsilon")) c.target_epsilon = get_or<double>(p, "target_epsilon", 0.0, kC, where);
  if (p.contains("noise_seed")) c.noise_seed = get_or<uint64_t>(p, "noise_seed", 0, kC, where);
  c.per_sample_gradients = get_or<std::string>(p, "per_sample_gradients", c.per_sample_gradients, kC, where);
  privacy::per_sample_method_from_string(c.per_sample_gradients, where);
  c.max_physical_batch = get_or<int64_t>(p, "max_physical_batch", c.max_physical_batch, kC, where);
  PEFT_CHECK(c.max_physical_batch >= 0, kC, "{}: max_physical_batch must be >= 0 (0: batch_size), found {}", where,
             c.max_physical_batch);
  PEFT_CHECK(c.noise_multiplier.has_value() != c.target_epsilon.has_value(), kC,
             "{}: give noise_multiplier or target_epsilon (one of them)", where);
  return c;
}

EvaluationSets evaluation_sets(const RunParts& parts) {
  if (parts.validation) return {parts.validation, parts.eval};
  return {parts.eval, nullptr};
}

}  // namespace peft::train
