// Loading Hugging Face model directories: config.json + model.safetensors (or a sharded
// model.safetensors.index.json), by config.json's model_type.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <nlohmann/json_fwd.hpp>

#include "peft/models/model.h"

namespace peft::models {

struct LoadOptions {
  /// Convert floating-point weights to this dtype; by default each keeps the file's dtype.
  std::optional<c10::ScalarType> dtype;
  c10::Device device = c10::Device(c10::kCPU);
  /// Unexpected checkpoint tensors are an error unless this is set (then they are reported).
  bool allow_extra_tensors = false;
};

using ModelFactory = std::function<std::shared_ptr<PretrainedModel>(const nlohmann::json& config)>;

/// Registers a backbone for a config.json model_type (built-ins are registered on first use).
void register_model_type(const std::string& model_type, ModelFactory factory);
std::vector<std::string> registered_model_types();

/// A randomly initialized model from a config (HF's config.json content).
std::shared_ptr<PretrainedModel> create_model(const nlohmann::json& config);
/// config.json + weights from `dir`; every base parameter frozen.
std::shared_ptr<PretrainedModel> load_pretrained(const std::string& dir, const LoadOptions& options = {});
/// Loads the weights of `dir` into an existing model (names and shapes checked).
void load_weights(PretrainedModel& model, const std::string& dir, const LoadOptions& options = {});

}  // namespace peft::models
