// Run configs: the input is a JSON run config, and its lines after the first NUL byte are
// --set overrides; then every part is read as peft-train reads it, short of loading a model.
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_input.h"
#include "peft/core/json_io.h"
#include "peft/methods/method.h"
#include "peft/train/run_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string all(reinterpret_cast<const char*>(data), size);
  const auto cut = std::min(all.find('\0'), all.size());
  const std::string config_text = all.substr(0, cut);
  std::vector<std::string> sets;
  if (cut < all.size()) {
    std::istringstream lines(all.substr(cut + 1));
    for (std::string l; std::getline(lines, l);) sets.push_back(l);
  }
  const auto& path = peft::fuzz::write_input(reinterpret_cast<const uint8_t*>(config_text.data()), config_text.size(), "run.json");
  return peft::fuzz::accept_errors([&] {
    auto config = peft::train::load_run_config(path, sets);
    peft::train::load_options_from_json(config, path);
    if (config.is_object() && config.contains("trainer"))
      peft::train::trainer_config_from_json(config["trainer"], path + " trainer");
    if (config.is_object() && config.contains("method") && config["method"].is_object())
      peft::methods::parse_config(config["method"]);
  });
}
