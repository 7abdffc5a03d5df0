// config.json -> a model: geometry from the config alone, then the module tree for configs small
// enough to build here (a real config of any size must give a geometry or a named error).
#include <nlohmann/json.hpp>

#include "fuzz_input.h"
#include "peft/core/json_io.h"
#include "peft/models/load.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& path = peft::fuzz::write_input(data, size, "config.json");
  return peft::fuzz::accept_errors([&] {
    const auto config = peft::core::read_json_file(path);
    const auto g = peft::models::model_geometry(config);
    // Build only what fits in a few MiB: the harness checks parsing, not the allocator.
    const double width = static_cast<double>(std::max<int64_t>(g.hidden_size, 1));
    const double weights = static_cast<double>(g.num_layers) * 12.0 * width * width +
                           static_cast<double>(g.vocab_size + g.max_positions) * width;
    if (g.num_layers > 4 || g.hidden_size > 256 || g.vocab_size > 4096 || g.max_positions > 4096 ||
        g.intermediate_size > 1024 || weights > 4e6)
      return;
    peft::models::create_model(config);
  });
}
