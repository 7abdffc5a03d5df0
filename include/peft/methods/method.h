// The method registry: every PEFT method registers its name, its HF peft_type, a config parser
// and an attach function. Adding a method = one file + one line in registry.cpp.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace peft {
class PeftModel;
}
namespace peft::models {
struct ModelGeometry;
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

  CommonConfig common;
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
};

void register_method(Method method);
/// By registry name ("lora") or HF peft_type ("LORA"); unknown names list the known ones.
const Method& find_method(const std::string& name_or_peft_type);
std::vector<std::string> method_names();
/// Parses a config by its "peft_type" (or "method") field.
std::shared_ptr<MethodConfig> parse_config(const nlohmann::json& j);

// Helpers for method configs: the fields every HF config carries.
void read_common(const nlohmann::json& j, CommonConfig& c, const std::string& where);
void write_common(nlohmann::json& j, const CommonConfig& c, const std::string& peft_type);
/// Keys read_common understands, for unknown-key checks.
const std::vector<std::string>& common_keys();

}  // namespace peft::methods
