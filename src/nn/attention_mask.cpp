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

at::Tensor causal_additive_mask(const at::Tensor& attention_mask, int64_t batch, int64_t query_len,
                                int64_t key_len, c10::ScalarType dtype, c10::Device device) {
  const int64_t past = key_len - query_len;
  PEFT_CHECK(past >= 0, "nn", "causal mask: {} queries cannot attend to only {} keys", query_len, key_len);
  auto idx = torch::TensorOptions().dtype(torch::kLong).device(device);
  at::Tensor q = torch::arange(query_len, idx).unsqueeze(1) + past;
  at::Tensor k = torch::arange(key_len, idx).unsqueeze(0);
  at::Tensor blocked = (k > q).view({1, 1, query_len, key_len});
  if (attention_mask.defined()) {
    PEFT_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == batch && attention_mask.size(1) == key_len,
               "nn", "attention_mask has shape {}, expected [{}, {}]", c10::str(attention_mask.sizes()), batch,
               key_len);
    blocked = blocked | (attention_mask.to(device) == 0).view({batch, 1, 1, key_len});
  }
  auto opts = torch::TensorOptions().dtype(dtype).device(device);
  return torch::where(blocked, torch::full({}, lowest_value(dtype), opts), torch::zeros({}, opts));
}

}  // namespace peft::nn
