// Errors: one exception type and one check macro for the whole library.
//
// Every message names the component that raised it and says what was expected and what
// was found, e.g.
//   [peft::safetensors] adapter_model.safetensors: tensor 'w' expects 64 bytes (F32 [4,4]), found 60
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace peft {

class Error : public std::runtime_error {
 public:
  Error(std::string component, const std::string& message)
      : std::runtime_error(fmt::format("[peft::{}] {}", component, message)),
        component_(std::move(component)) {}
  const std::string& component() const noexcept { return component_; }

 private:
  std::string component_;
};

[[noreturn]] inline void fail(const std::string& component, const std::string& message) {
  throw Error(component, message);
}

}  // namespace peft

/// PEFT_CHECK(condition, "component", "fmt message {}", args...)
/// Throws peft::Error("[peft::component] message") when the condition is false.
#define PEFT_CHECK(cond, component, ...)                         \
  do {                                                           \
    if (!(cond)) ::peft::fail((component), fmt::format(__VA_ARGS__)); \
  } while (0)
