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

std::string fingerprint(const std::map<std::string, at::Tensor>& named_tensors) {
  constexpr int64_t kSample = 256;
  Fnv1a f;
  for (const auto& [name, t] : named_tensors) {
    f.add(name);
    for (int64_t d : t.sizes()) f.add(&d, sizeof d);
    at::Tensor flat = t.detach().reshape(-1);
    const int64_t n = flat.numel();
    at::Tensor sample = n <= 2 * kSample ? flat
                                         : at::cat({flat.slice(0, 0, kSample), flat.slice(0, n - kSample, n)});
    sample = sample.to(at::kCPU);
    if (sample.is_floating_point()) {
      sample = sample.to(at::kBFloat16).contiguous();
    } else {
      sample = sample.to(at::kLong).contiguous();
    }
    f.add(sample.data_ptr(), sample.numel() * sample.element_size());
  }
  return fmt::format("{:016x}", f.h);
}

}  // namespace peft::core
