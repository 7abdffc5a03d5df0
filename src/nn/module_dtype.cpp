#include "peft/nn/module_dtype.h"

#include <torch/torch.h>

namespace peft::nn {

void to_floating_dtype(torch::nn::Module& module, c10::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters(/*recurse=*/true))
    if (p.is_floating_point() && p.scalar_type() != dtype) p.set_data(p.to(dtype));
  for (auto& b : module.buffers(/*recurse=*/true))
    if (b.is_floating_point() && b.scalar_type() != dtype) b.set_data(b.to(dtype));
}

bool is_half_precision(c10::ScalarType dtype) { return dtype == c10::kBFloat16 || dtype == c10::kHalf; }

}  // namespace peft::nn
