// Every difference between the LibTorch releases this library builds against (Debian's 1.13 and
// current 2.x) is bridged here, and only here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace peft::core {

/// Autocast (automatic mixed precision) for one device type.
bool autocast_enabled(c10::DeviceType device);
c10::ScalarType autocast_dtype(c10::DeviceType device);
void set_autocast(c10::DeviceType device, bool enabled, c10::ScalarType dtype);
/// Drops the casts autocast cached for the current step (after each forward/backward).
void clear_autocast_cache();

/// Whether this LibTorch has at::scaled_dot_product_attention (2.0 and later).
bool has_fused_attention();
/// softmax(q kᵀ / sqrt(d) + mask) v through the fused kernel (flash / memory-efficient on CUDA);
/// only callable when has_fused_attention().
at::Tensor fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& additive_mask,
                           double dropout);

/// Peak bytes the CUDA caching allocator handed out on `device` since the last reset, or -1
/// when this LibTorch has no CUDA.
int64_t cuda_peak_allocated_bytes(int device);
void reset_cuda_peak(int device);

}  // namespace peft::core
