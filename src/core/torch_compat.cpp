#include "core/torch_compat.h"

#include <optional>

#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "peft/core/error.h"

#if defined(__has_include)
#if __has_include(<c10/cuda/CUDACachingAllocator.h>) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define PEFT_HAS_CUDA_ALLOCATOR 1
#endif
#endif

#define PEFT_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace peft::core {

bool autocast_enabled(c10::DeviceType device) {
#if PEFT_TORCH_AT_LEAST(2, 4)
  return at::autocast::is_autocast_enabled(device);
#else
  return device == c10::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

c10::ScalarType autocast_dtype(c10::DeviceType device) {
#if PEFT_TORCH_AT_LEAST(2, 4)
  return at::autocast::get_autocast_dtype(device);
#else
  return device == c10::kCUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
#endif
}

void set_autocast(c10::DeviceType device, bool enabled, c10::ScalarType dtype) {
  PEFT_CHECK(device == c10::kCPU || device == c10::kCUDA, "core", "autocast is available on CPU and CUDA only");
#if PEFT_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(device, enabled);
  at::autocast::set_autocast_dtype(device, dtype);
#else
  if (device == c10::kCUDA) {
    at::autocast::set_enabled(enabled);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_cpu_enabled(enabled);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
}

void clear_autocast_cache() { at::autocast::clear_cache(); }

bool has_fused_attention() { return PEFT_TORCH_AT_LEAST(2, 1); }

at::Tensor fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& additive_mask,
                           double dropout) {
#if PEFT_TORCH_AT_LEAST(2, 4)
  std::optional<at::Tensor> mask;  // c10::optional is std::optional from 2.4 on
#endif
#if PEFT_TORCH_AT_LEAST(2, 1) && !PEFT_TORCH_AT_LEAST(2, 4)
  c10::optional<at::Tensor> mask;
#endif
#if PEFT_TORCH_AT_LEAST(2, 1)
  if (additive_mask.defined()) mask = additive_mask.to(q.scalar_type());
  return at::scaled_dot_product_attention(q, k, v, mask, dropout, /*is_causal=*/false);
#else
  (void)q, (void)k, (void)v, (void)additive_mask, (void)dropout;
  fail("core", "fused attention needs LibTorch 2.1 or later; this is " TORCH_VERSION);
#endif
}

int64_t cuda_peak_allocated_bytes(int device) {
#ifdef PEFT_HAS_CUDA_ALLOCATOR
  if (!torch::cuda::is_available()) return -1;
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
  return stats.allocated_bytes[static_cast<size_t>(c10::cuda::CUDACachingAllocator::StatType::AGGREGATE)].peak;
#else
  (void)device;
  return -1;
#endif
}

void reset_cuda_peak(int device) {
#ifdef PEFT_HAS_CUDA_ALLOCATOR
  if (torch::cuda::is_available())
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
#else
  (void)device;
#endif
}

}  // namespace peft::core
