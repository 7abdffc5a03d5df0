// The one-JSON-per-run configuration of peft-train / peft-eval, with --set key.path=value
// overrides, and the objects it builds (tokenizer, model, datasets, trainer settings).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/data/dataset.h"
#include "peft/models/model.h"
#include "peft/tokenizers/tokenizer.h"
#include "peft/train/trainer.h"

namespace peft::apps {

/// Reads `path` and applies each "a.b.c=value" (value parsed as JSON, else taken as a string).
nlohmann::json load_run_config(const std::string& path, const std::vector<std::string>& overrides);

struct RunParts {
  std::shared_ptr<tokenizers::Tokenizer> tokenizer;  ///< null for image data
  std::shared_ptr<models::PretrainedModel> model;
  std::shared_ptr<data::Dataset> train, eval;
  train::TrainerConfig trainer;
};

/// Builds everything but the method. `need_train`: whether data.train is required.
RunParts build_run(const nlohmann::json& config, const std::string& where, bool need_train);

}  // namespace peft::apps
