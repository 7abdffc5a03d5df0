// A training run described by one JSON object — model, method, data, trainer — as peft-train,
// peft-eval and applications read it, with "a.b.c=value" overrides. Each part is read by its own
// function, so an application can take one part (say, the trainer settings) from JSON alone.
// Every bad value is an error naming the file and the key.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/data/dataset.h"
#include "peft/models/load.h"
#include "peft/tokenizers/tokenizer.h"
#include "peft/train/trainer.h"

namespace peft::train {

/// Reads `path` and applies each "a.b.c=value" (value parsed as JSON, else taken as a string).
nlohmann::json load_run_config(const std::string& path, const std::vector<std::string>& overrides = {});
/// Applies one "a.b.c=value" override to `config`; `where` names the file in errors.
void apply_override(nlohmann::json& config, const std::string& assignment, const std::string& where);

/// The run's "task", "num_labels", "device", "dtype" and "quantization" keys.
models::LoadOptions load_options_from_json(const nlohmann::json& config, const std::string& where);

/// The datasets of a run's "data" object and the tokenizer they need.
struct RunData {
  std::shared_ptr<tokenizers::Tokenizer> tokenizer;  ///< null for image data
  std::shared_ptr<data::Dataset> train, eval;
  /// data.validation (a file) or data.validation_fraction (held out of train, seeded by
  /// data.validation_seed, default 0); null when neither is given.
  std::shared_ptr<data::Dataset> validation;
  /// The label count a classification set implies (its training set's labels), if any.
  std::optional<int64_t> num_labels;
  /// The largest token id the data introduces beyond its tokenizer (span-corruption sentinels).
  std::optional<int64_t> max_token_id;
};
/// `data.kind`: "jsonl_classification", "text", "seq2seq_jsonl", "span_corruption" or "idx" (see the README); `tokenizer_dir` is
/// read for the text kinds. `need_train`: whether the training set is required.
RunData load_run_data(const nlohmann::json& data, const std::string& tokenizer_dir, const std::string& where,
                      bool need_train);

/// A run's "trainer" object over TrainerConfig's defaults (seed, device and output_dir are the run's).
TrainerConfig trainer_config_from_json(const nlohmann::json& trainer, const std::string& where);

/// A run's "privacy" object (DP-SGD): target_epsilon or noise_multiplier, delta, max_grad_norm,
/// sampling, noise_seed.
privacy::DpSgdConfig privacy_config_from_json(const nlohmann::json& privacy, const std::string& where);

struct RunParts {
  std::shared_ptr<tokenizers::Tokenizer> tokenizer;  ///< null for image data
  std::shared_ptr<models::PretrainedModel> model;
  std::shared_ptr<data::Dataset> train, eval, validation;
  TrainerConfig trainer;
  /// "delta_dtype" / "save_dtype" (see DeltaPrecision: a PeftModel of this run takes them);
  /// "gradient_checkpointing" is already applied to `model`.
  std::optional<c10::ScalarType> delta_dtype, save_dtype;
};

/// Which set selects (periodic evaluation, best/, early stopping) and which is scored once, at
/// the end, on the delta selection chose: with a validation set, validation selects and eval is
/// the test set; without one, eval selects and there is no separate test.
struct EvaluationSets {
  std::shared_ptr<const data::Dataset> selection, test;
};
EvaluationSets evaluation_sets(const RunParts& parts);

/// Seeds LibTorch with the run's "seed", then builds everything but the method: data, model
/// ("init": "pretrained" loads weights, "config" draws them), trainer settings.
RunParts build_run(const nlohmann::json& config, const std::string& where, bool need_train);

}  // namespace peft::train
