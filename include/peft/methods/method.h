// The method registry: every PEFT method registers its name, its HF peft_type, a config parser
// and an attach function, and optionally the lifecycle hooks that PeftModel and the trainer call
// without knowing the method: planning from data before attach (S3PET's structure search),
// initialisation from data after attach (SNIP / GraSP scores, Fisher importance), a training-loss
// term (AdaMix's consistency loss) and the form the delta ships in (AdaMix's expert average).
// Adding a method = its header and source, one line in registry.cpp, a conformance row and its
// own tests; nothing outside methods/ names it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

namespace peft {
class PeftModel;
}
namespace peft::models {
struct ModelGeometry;
struct ModelInputs;
struct ModelOutput;
}  // namespace peft::models
namespace peft::data {
class BatchSource;
}


namespace peft::methods {

/// Fields every adapter_config.json carries (HF PEFT's PeftConfig).
struct CommonConfig {
  std::string task_type;  ///< "" = null
  std::string base_model_name_or_path;
  std::string revision;
  bool inference_mode = false;
};

class MethodConfig {
 public:
  virtual ~MethodConfig() = default;
  virtual std::string method() const = 0;     ///< registry name, e.g. "lora"
  virtual std::string peft_type() const = 0;  ///< HF spelling, e.g. "LORA"
  /// The complete adapter_config.json content (HF field names).
  virtual nlohmann::json to_json() const = 0;
  /// Throws peft::Error naming the offending field.
  virtual void validate() const = 0;
  virtual std::shared_ptr<MethodConfig> clone() const = 0;
  /// For a config read from text: puts whatever depends on the order of keys in the text into
  /// `source`'s order (nlohmann::json objects sort their keys). Most configs have nothing such.
  virtual void follow_key_order(const nlohmann::ordered_json& /*source*/) {}
  /// What an adapter_config.json holds: to_json() with its keys sorted (as HF PEFT writes them),
  /// except objects whose key order carries meaning, which keep the config's order.
  virtual nlohmann::ordered_json to_file_json() const { return nlohmann::ordered_json(to_json()); }

  CommonConfig common;
};

/// Which data a config's lifecycle needs.
struct DataNeeds {
  bool plan = false;  ///< `plan` must see training batches before the adapter exists
  bool init = false;  ///< `prepare` must see training batches after attach
  std::string reason; ///< which setting needs them, for errors ("score 'snip' scores weights on a batch")
};

/// How add_weighted_adapter combines deltas (HF PEFT's add_weighted_adapter arguments).
struct WeightedCombination {
  /// linear | cat | svd | ties | dare_linear | dare_ties | magnitude_prune, or ties_svd,
  /// dare_linear_svd, dare_ties_svd, magnitude_prune_svd (that combination of the weight deltas,
  /// then a truncated SVD). One source: always linear.
  std::string combination_type = "svd";
  std::optional<int64_t> svd_rank;   ///< the SVD's rank; unset: the largest source rank
  std::optional<double> svd_clamp;   ///< clamp the SVD factors at this quantile of their entries
  bool svd_full_matrices = true;
  std::optional<double> density;     ///< what ties / dare / magnitude_prune keep, in (0, 1]
  std::string majority_sign_method = "total";  ///< ties / dare_ties: "total" | "frequency"
  uint64_t seed = 0;                 ///< DARE's random drops (the same on every run)
};

struct Method {
  std::string name;       ///< lowercase, e.g. "lora"
  std::string peft_type;  ///< e.g. "LORA"
  /// Parses adapter_config.json content; unknown keys are errors.
  std::function<std::shared_ptr<MethodConfig>(const nlohmann::json&)> parse;
  /// Attaches freshly initialized trainable modules for `adapter` to the model. The config is
  /// the adapter's own copy: attach may normalize it (as HF does, e.g. fan_in_fan_out for Conv1D).
  std::function<void(PeftModel&, MethodConfig&, const std::string& adapter)> attach;
  /// Optional: the trainable parameter count from the model's geometry alone (no weights built),
  /// e.g. for a 7B configuration on a small machine.
  std::function<int64_t(const MethodConfig&, const models::ModelGeometry&)> count;

  // ---- optional lifecycle hooks ----
  /// What `config` needs from data (absent: nothing).
  std::function<DataNeeds(const MethodConfig&)> data_needs;
  /// With DataNeeds::plan: the config to attach instead, found from training batches (S3PET:
  /// the structure its search selects). The model is left as it was.
  std::function<std::shared_ptr<MethodConfig>(PeftModel&, const MethodConfig&, const data::BatchSource&)> plan;
  /// The file under a training run's output_dir that keeps the planned config, so that --resume
  /// plans nothing (e.g. "structure.json").
  std::string plan_file;
  /// With DataNeeds::init: initialises the attached `adapter` from training batches.
  std::function<void(PeftModel&, const std::string& adapter, const data::BatchSource&)> prepare;
  /// A term added to the training loss of a step in training mode (AdaMix: the consistency loss
  /// of a second, independently routed pass); undefined: none.
  std::function<at::Tensor(PeftModel&, const std::string& adapter, const models::ModelInputs&,
                           const models::ModelOutput&)>
      training_loss;
  /// The delta as shipped: adds `target`, the deployable form of `source` (AdaMix: its experts
  /// averaged into one), and returns true; false when `source` ships as it is.
  std::function<bool(PeftModel&, const std::string& source, const std::string& target)> deploy;
  /// The role of one of the method's trainable tensors, by its name in the model — "scale"
  /// (IA³), "gate", "prompt" — or "" to leave it to its name and shape (optim::default_parameter_role).
  /// The trainer exempts roles from weight decay (TrainerConfig::no_decay).
  std::function<std::string(const std::string& parameter)> parameter_role;
  /// Adds adapter `target` combining `sources` (all of this method) with `weights`
  /// (PeftModel::add_weighted_adapter); absent: the method's deltas cannot be combined.
  std::function<void(PeftModel&, const std::vector<std::string>& sources, const std::vector<double>& weights,
                     const std::string& target, const WeightedCombination&)>
      combine;
};

void register_method(Method method);
/// By registry name ("lora") or HF peft_type ("LORA"); unknown names list the known ones.
const Method& find_method(const std::string& name_or_peft_type);
std::vector<std::string> method_names();
/// Parses a config by its "peft_type" (or "method") field.
std::shared_ptr<MethodConfig> parse_config(const nlohmann::json& j);
/// Parses an adapter_config.json-style file, keeping what depends on its key order in the
/// file's order (MethodConfig::follow_key_order); errors name the file.
std::shared_ptr<MethodConfig> parse_config_file(const std::string& path);
/// What `config`'s method needs from data (nothing when it has no data_needs hook).
DataNeeds data_needs(const MethodConfig& config);
/// The config to attach: the method's plan from `batches` when it needs one, else a copy.
std::shared_ptr<MethodConfig> plan_config(PeftModel& model, const MethodConfig& config, const data::BatchSource& batches);

// Helpers for method configs: the fields every HF config carries.
void read_common(const nlohmann::json& j, CommonConfig& c, const std::string& where);
void write_common(nlohmann::json& j, const CommonConfig& c, const std::string& peft_type);
/// Keys read_common understands, for unknown-key checks.
const std::vector<std::string>& common_keys();

}  // namespace peft::methods
