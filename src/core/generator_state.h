// Keeps LibTorch's default generators (CPU and every CUDA device's) as they were across a scope:
// work that draws random numbers on the side, such as building a temporary adapter to export,
// must not shift the draws of training (dropout, AdaMix's routing).
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::core {

class GeneratorStateGuard {
 public:
  GeneratorStateGuard();
  ~GeneratorStateGuard();
  GeneratorStateGuard(const GeneratorStateGuard&) = delete;
  GeneratorStateGuard& operator=(const GeneratorStateGuard&) = delete;

 private:
  at::Tensor cpu_;
  std::vector<at::Tensor> cuda_;  // one per device
};

}  // namespace peft::core
