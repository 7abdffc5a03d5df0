#include "core/generator_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <torch/cuda.h>

namespace peft::core {
namespace {
at::Generator cuda_generator(size_t device) {
  return at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device)));
}
}  // namespace

GeneratorStateGuard::GeneratorStateGuard() {
  auto cpu = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(cpu.mutex());
    cpu_ = cpu.get_state();
  }
  if (torch::cuda::is_available())
    for (size_t d = 0; d < torch::cuda::device_count(); ++d) {
      auto gen = cuda_generator(d);
      std::lock_guard<std::mutex> lock(gen.mutex());
      cuda_.push_back(gen.get_state());
    }
}

GeneratorStateGuard::~GeneratorStateGuard() {
  auto cpu = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(cpu.mutex());
    cpu.set_state(cpu_);
  }
  for (size_t d = 0; d < cuda_.size(); ++d) {
    auto gen = cuda_generator(d);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(cuda_[d]);
  }
}

}  // namespace peft::core
