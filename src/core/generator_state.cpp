#include "core/generator_state.h"

#include <mutex>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <torch/cuda.h>

namespace peft::core {
namespace {
/// The generators this process has, by name.
std::map<std::string, at::Generator> generators() {
  std::map<std::string, at::Generator> out = {{"cpu", at::detail::getDefaultCPUGenerator()}};
  if (torch::cuda::is_available())
    for (size_t d = 0; d < torch::cuda::device_count(); ++d)
      out["cuda." + std::to_string(d)] =
          at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(d)));
  return out;
}
}  // namespace

std::map<std::string, at::Tensor> generator_states() {
  std::map<std::string, at::Tensor> out;
  for (auto& [name, gen] : generators()) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    out[name] = gen.get_state();
  }
  return out;
}

std::vector<std::string> set_generator_states(const std::map<std::string, at::Tensor>& states) {
  auto gens = generators();
  std::vector<std::string> unknown;
  for (const auto& [name, state] : states) {
    auto it = gens.find(name);
    if (it == gens.end()) {
      unknown.push_back(name);
      continue;
    }
    std::lock_guard<std::mutex> lock(it->second.mutex());
    it->second.set_state(state);
  }
  return unknown;
}

}  // namespace peft::core
