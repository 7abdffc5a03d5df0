// A fingerprint of a base model, stored with every delta so that loading it onto a different
// base fails with a clear message instead of silently producing garbage.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::core {

/// What the fingerprint reads of one tensor: its shape and a fixed sample of its values (the
/// first and last 256 elements, rounded to bfloat16 so that float32 / bfloat16 copies of the
/// same base agree). A quantized layer keeps its original weight's identity, so its base
/// fingerprints as the unquantized one.
struct TensorIdentity {
  std::vector<int64_t> shape;
  at::Tensor sample;  ///< CPU, bfloat16 (floating tensors) or int64
};
TensorIdentity tensor_identity(const at::Tensor& tensor);

/// Hashes parameter names and identities. Cheap for any model size. Returns 16 hex digits.
std::string fingerprint(const std::map<std::string, TensorIdentity>& named_identities);
std::string fingerprint(const std::map<std::string, at::Tensor>& named_tensors);

}  // namespace peft::core
