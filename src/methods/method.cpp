#include "peft/methods/method.h"

#include <map>
#include <mutex>

#include "peft/core/error.h"
#include "peft/core/json_io.h"

namespace peft::methods {

void register_builtin_methods();  // registry.cpp

namespace {

std::vector<Method>& table() {
  static std::vector<Method> t;
  return t;
}

std::mutex& table_mutex() {
  static std::mutex m;
  return m;
}

void ensure_builtins() {
  static std::once_flag once;
  std::call_once(once, register_builtin_methods);
}

}  // namespace

void register_method(Method method) {
  std::lock_guard<std::mutex> lock(table_mutex());
  for (const auto& m : table())
    PEFT_CHECK(m.name != method.name && m.peft_type != method.peft_type, "methods",
               "method '{}' ({}) is already registered", method.name, method.peft_type);
  table().push_back(std::move(method));
}

const Method& find_method(const std::string& name) {
  ensure_builtins();
  std::lock_guard<std::mutex> lock(table_mutex());
  for (const auto& m : table())
    if (m.name == name || m.peft_type == name) return m;
  std::vector<std::string> known;
  for (const auto& m : table()) known.push_back(m.name);
  fail("methods", fmt::format("unknown PEFT method '{}' (registered: {})", name, fmt::join(known, ", ")));
}

std::vector<std::string> method_names() {
  ensure_builtins();
  std::lock_guard<std::mutex> lock(table_mutex());
  std::vector<std::string> out;
  for (const auto& m : table()) out.push_back(m.name);
  return out;
}

std::shared_ptr<MethodConfig> parse_config(const nlohmann::json& j) {
  PEFT_CHECK(j.is_object(), "methods", "adapter config: expected a JSON object, found {}", j.type_name());
  std::string key = j.contains("peft_type") ? "peft_type" : "method";
  PEFT_CHECK(j.contains(key) && j[key].is_string(), "methods",
             "adapter config: missing string 'peft_type' (e.g. \"LORA\")");
  return find_method(j[key].get<std::string>()).parse(j);
}

std::shared_ptr<MethodConfig> parse_config_file(const std::string& path) {
  const auto ordered = core::read_ordered_json_file(path);
  try {
    auto config = parse_config(nlohmann::json(ordered));
    config->follow_key_order(ordered);
    return config;
  } catch (const Error& e) {
    fail("methods", fmt::format("{}: {}", path, e.what()));
  }
}

DataNeeds data_needs(const MethodConfig& config) {
  const auto& method = find_method(config.method());
  return method.data_needs ? method.data_needs(config) : DataNeeds{};
}

std::shared_ptr<MethodConfig> plan_config(PeftModel& model, const MethodConfig& config, const data::BatchSource& batches) {
  const auto& method = find_method(config.method());
  if (!data_needs(config).plan) return config.clone();
  PEFT_CHECK(method.plan, "methods", "method '{}' needs a plan from data but registers no plan hook", method.name);
  auto planned = method.plan(model, config, batches);
  PEFT_CHECK(planned && !data_needs(*planned).plan, "methods", "method '{}': its plan did not give a final config",
             method.name);
  return planned;
}

const std::vector<std::string>& common_keys() {
  static const std::vector<std::string> k = {"peft_type",   "task_type",   "base_model_name_or_path",
                                             "revision",    "inference_mode", "auto_mapping",
                                             "peft_version"};
  return k;
}

void read_common(const nlohmann::json& j, CommonConfig& c, const std::string& where) {
  using core::get_or;
  c.task_type = get_or<std::string>(j, "task_type", "", "methods", where);
  c.base_model_name_or_path = get_or<std::string>(j, "base_model_name_or_path", "", "methods", where);
  c.revision = get_or<std::string>(j, "revision", "", "methods", where);
  c.inference_mode = get_or<bool>(j, "inference_mode", false, "methods", where);
  static const char* kTasks[] = {"", "SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS",
                                 "FEATURE_EXTRACTION"};
  bool ok = false;
  for (const char* t : kTasks) ok = ok || c.task_type == t;
  PEFT_CHECK(ok, "methods", "{}: task_type '{}' is not one of SEQ_CLS, SEQ_2_SEQ_LM, CAUSAL_LM, TOKEN_CLS, "
             "QUESTION_ANS, FEATURE_EXTRACTION or null", where, c.task_type);
}

void write_common(nlohmann::json& j, const CommonConfig& c, const std::string& peft_type) {
  auto str_or_null = [](const std::string& s) { return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s); };
  j["peft_type"] = peft_type;
  j["task_type"] = str_or_null(c.task_type);
  j["base_model_name_or_path"] = str_or_null(c.base_model_name_or_path);
  j["revision"] = str_or_null(c.revision);
  j["inference_mode"] = c.inference_mode;
  j["auto_mapping"] = nullptr;
}

}  // namespace peft::methods
