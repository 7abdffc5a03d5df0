#include "peft/nn/attention_mask.h"

#include <limits>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {

double lowest_value(c10::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return std::numeric_limits<double>::lowest();
    case at::kFloat: return std::numeric_limits<float>::lowest();
    case at::kBFloat16: return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    case at::kHalf: return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
    default: fail("nn", fmt::format("lowest_value: expected a floating dtype, found {}", c10::toString(dtype)));
  }
}

at::Tensor additive_padding_mask(const at::Tensor& attention_mask, c10::ScalarType dtype) {
  at::Tensor m = attention_mask.to(dtype).unsqueeze(1).unsqueeze(2);
  return (1.0 - m) * lowest_value(dtype);
}

}  // namespace peft::nn
