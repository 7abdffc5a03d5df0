// y = x Wᵀ + b for a quantized frozen W: W is dequantized in forward and again for the input
// gradient, never kept for backward (only the codes are), so a quantized base costs its
// quantized bytes plus one layer's dequantized weight at a time.
#pragma once

#include <memory>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include "peft/nn/quantization.h"

namespace peft::nn {

/// `x` is cast to `compute_dtype`; `bias` (undefined: none) may require a gradient.
at::Tensor quantized_linear(const at::Tensor& x, const std::shared_ptr<const QuantizedWeight>& weight,
                            const at::Tensor& bias, c10::ScalarType compute_dtype);

}  // namespace peft::nn
