// Casting a module's floating-point tensors only. (LibTorch's Module::to(dtype) casts every
// parameter and buffer, index and mask buffers included.)
#pragma once

#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

namespace peft::nn {

/// Every floating-point parameter and buffer of `module` (recursively) to `dtype`, in place.
void to_floating_dtype(torch::nn::Module& module, c10::ScalarType dtype);

/// Whether `dtype` is bfloat16 or float16.
bool is_half_precision(c10::ScalarType dtype);

}  // namespace peft::nn
