// LibTorch's default generators (the CPU's and every CUDA device's): their states by name, for a
// training state to keep, and a guard that keeps them as they were across a scope — work that
// draws random numbers on the side, such as building a temporary adapter to export, must not
// shift the draws of training (dropout, AdaMix's routing).
#pragma once

#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::core {

/// "cpu", and "cuda.<i>" for each CUDA device when CUDA is available.
std::map<std::string, at::Tensor> generator_states();
/// Restores the states `generator_states` returned; an entry for a generator this process does
/// not have is reported by the returned names (nothing is restored for it).
std::vector<std::string> set_generator_states(const std::map<std::string, at::Tensor>& states);

class GeneratorStateGuard {
 public:
  GeneratorStateGuard() : states_(generator_states()) {}
  ~GeneratorStateGuard() { set_generator_states(states_); }
  GeneratorStateGuard(const GeneratorStateGuard&) = delete;
  GeneratorStateGuard& operator=(const GeneratorStateGuard&) = delete;

 private:
  std::map<std::string, at::Tensor> states_;
};

}  // namespace peft::core
