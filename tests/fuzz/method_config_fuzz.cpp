// adapter_config.json and every method's config: parse, validate, write back, parse again (the
// round trip must be stable).
#include <filesystem>

#include <nlohmann/json.hpp>

#include "fuzz_input.h"
#include "peft/checkpoint/delta.h"
#include "peft/methods/method.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& path = peft::fuzz::write_input(data, size, "adapter_config.json");
  return peft::fuzz::accept_errors([&] {
    auto dir = std::filesystem::path(path).parent_path().string();
    auto config = peft::checkpoint::read_adapter_config(dir);
    auto again = peft::methods::parse_config(config->to_json());
    if (again->to_json() != config->to_json()) __builtin_trap();  // a config must survive its own writer
  });
}
