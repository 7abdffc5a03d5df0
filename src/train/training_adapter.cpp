#include "peft/train/training_adapter.h"

#include <filesystem>

#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"

namespace peft::train {

std::shared_ptr<methods::MethodConfig> add_training_adapter(PeftModel& model, const std::string& adapter,
                                                            const methods::MethodConfig& config,
                                                            const data::BatchSource& batches,
                                                            const std::string& output_dir, bool resume) {
  const auto& method = methods::find_method(config.method());
  const bool planned = methods::data_needs(config).plan;
  const std::string plan_path =
      method.plan_file.empty() ? "" : (std::filesystem::path(output_dir) / method.plan_file).string();
  std::shared_ptr<methods::MethodConfig> attach;
  if (resume) {
    if (planned) {
      PEFT_CHECK(!plan_path.empty() && std::filesystem::exists(plan_path), "train",
                 "--resume: {} is missing (the {} config planned before training)",
                 plan_path.empty() ? method.name + " plan" : plan_path, method.name);
      attach = methods::parse_config_file(plan_path);
    } else {
      attach = config.clone();
    }
    model.add_adapter_without_data(adapter, *attach);
    return attach;
  }
  attach = methods::plan_config(model, config, batches);
  if (planned && !output_dir.empty() && !plan_path.empty()) {
    std::filesystem::create_directories(output_dir);
    core::write_ordered_json_file(plan_path, attach->to_file_json());
    log::info("planned {} config: {}", method.name, plan_path);
  }
  model.add_adapter(adapter, *attach, batches);
  return attach;
}

}  // namespace peft::train
