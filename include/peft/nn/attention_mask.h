// Attention-mask helpers shared by every backbone.
#pragma once

#include <ATen/core/Tensor.h>

namespace peft::nn {

/// The most negative finite value of a floating dtype (torch.finfo(dtype).min).
double lowest_value(c10::ScalarType dtype);

/// HF's extended padding mask: [batch, seq] of 1/0 -> [batch, 1, 1, seq] of 0 / lowest_value.
at::Tensor additive_padding_mask(const at::Tensor& attention_mask, c10::ScalarType dtype);

}  // namespace peft::nn
