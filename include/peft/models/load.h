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
#include "peft/models/quantize.h"

namespace peft::models {

struct LoadOptions {
  /// Convert floating-point weights to this dtype; by default each keeps the file's dtype.
  std::optional<c10::ScalarType> dtype;
  c10::Device device = c10::Device(c10::kCPU);
  /// Unexpected checkpoint tensors are an error unless this is set (then they are reported).
  bool allow_extra_tensors = false;
  /// Which head to build: causal_lm, sequence_classification, image_classification or
  /// feature_extraction (HF PEFT's CAUSAL_LM / SEQ_CLS / FEATURE_EXTRACTION also accepted).
  /// Empty: config.json's "architectures", else the family's default. A head the checkpoint
  /// lacks is newly initialized (and reported); another architecture's head is dropped (reported).
  std::string task;
  /// Overrides config.json's label count for a classification head.
  std::optional<int64_t> num_labels;
  /// Store the linears quantized (see models/quantize.h), each quantized from the checkpoint
  /// tensor as it is read: no wide copy of the whole model is ever held. The other floating
  /// tensors take `dtype`, else the compute dtype.
  std::optional<QuantizationConfig> quantization;
};

using ModelFactory = std::function<std::shared_ptr<PretrainedModel>(const nlohmann::json& config)>;

/// Registers a Hugging Face architecture (e.g. "BertForSequenceClassification") of a config.json
/// model_type, serving `task`. The first architecture registered for a type is its default.
void register_architecture(const std::string& model_type, const std::string& architecture, const std::string& task,
                           ModelFactory factory);
/// Registers a backbone for a model_type under the task "custom" (built-ins are registered on first use).
void register_model_type(const std::string& model_type, ModelFactory factory);
std::vector<std::string> registered_model_types();
/// "architecture (task)" entries registered for a model_type, default first.
std::vector<std::string> registered_architectures(const std::string& model_type);
/// The canonical task name for a task or HF PEFT task_type; unknown names are an error listing both.
std::string canonical_task(const std::string& task);
/// The task a generating tool loads a config for: seq2seq_lm for encoder-decoders (config.json's
/// "is_encoder_decoder", or a T5 model_type), causal_lm otherwise.
std::string generation_task(const nlohmann::json& config);

/// A randomly initialized model from a config (HF's config.json content), for `task` (see LoadOptions).
std::shared_ptr<PretrainedModel> create_model(const nlohmann::json& config, const std::string& task = "",
                                              std::optional<int64_t> num_labels = std::nullopt);
/// create_model's model with its random weights drawn on `device` in `dtype` (the floating
/// tensors): nothing is initialized on the host first, so a billion-parameter model for a
/// benchmark costs neither host memory nor host time. With `quantization`, each linear it
/// quantizes is drawn (N(0, initializer_range²)) and quantized in turn, never all at once wide.
std::shared_ptr<PretrainedModel> create_model_on(const nlohmann::json& config, c10::Device device,
                                                 std::optional<c10::ScalarType> dtype, const std::string& task = "",
                                                 const std::optional<QuantizationConfig>& quantization = std::nullopt);
/// Layer counts and attention shapes from a config alone (nothing is allocated for built-in types).
ModelGeometry model_geometry(const nlohmann::json& config);
/// config.json + weights from `dir`; every base parameter frozen.
std::shared_ptr<PretrainedModel> load_pretrained(const std::string& dir, const LoadOptions& options = {});
/// Loads the weights of `dir` into an existing model (names and shapes checked).
void load_weights(PretrainedModel& model, const std::string& dir, const LoadOptions& options = {});

}  // namespace peft::models
