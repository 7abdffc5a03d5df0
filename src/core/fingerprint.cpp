#include "peft/core/fingerprint.h"

#include <cstring>

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace peft::core {
namespace {

struct Fnv1a {
  uint64_t h = 1469598103934665603ull;
  void add(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  void add(const std::string& s) {
    add(s.data(), s.size());
    add("\0", 1);
  }
};

}  // namespace

TensorIdentity tensor_identity(const at::Tensor& tensor) {
  constexpr int64_t kSample = 256;
  TensorIdentity id;
  id.shape = tensor.sizes().vec();
  at::Tensor flat = tensor.detach().reshape(-1);
  const int64_t n = flat.numel();
  at::Tensor sample = n <= 2 * kSample ? flat : at::cat({flat.slice(0, 0, kSample), flat.slice(0, n - kSample, n)});
  sample = sample.to(at::kCPU);
  id.sample = (sample.is_floating_point() ? sample.to(at::kBFloat16) : sample.to(at::kLong)).contiguous();
  return id;
}

std::string fingerprint(const std::map<std::string, TensorIdentity>& named_identities) {
  Fnv1a f;
  for (const auto& [name, id] : named_identities) {
    f.add(name);
    for (int64_t d : id.shape) f.add(&d, sizeof d);
    f.add(id.sample.data_ptr(), id.sample.numel() * id.sample.element_size());
  }
  return fmt::format("{:016x}", f.h);
}

std::string fingerprint(const std::map<std::string, at::Tensor>& named_tensors) {
  std::map<std::string, TensorIdentity> ids;
  for (const auto& [name, t] : named_tensors) ids[name] = tensor_identity(t);
  return fingerprint(ids);
}

}  // namespace peft::core
