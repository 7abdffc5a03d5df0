// A fingerprint of a base model, stored with every delta so that loading it onto a different
// base fails with a clear message instead of silently producing garbage.
#pragma once

#include <map>
#include <string>

#include <ATen/core/Tensor.h>

namespace peft::core {

/// Hashes parameter names, shapes and a fixed sample of values (the first and last 256
/// elements of each tensor, rounded to bfloat16 so that float32 / bfloat16 copies of the
/// same base agree). Cheap for any model size. Returns 16 hex digits.
std::string fingerprint(const std::map<std::string, at::Tensor>& named_tensors);

}  // namespace peft::core
