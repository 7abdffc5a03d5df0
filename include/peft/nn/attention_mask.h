// Attention-mask helpers shared by every backbone.
#pragma once

#include <ATen/core/Tensor.h>

namespace peft::nn {

/// The most negative finite value of a floating dtype (torch.finfo(dtype).min).
double lowest_value(c10::ScalarType dtype);

/// HF's extended padding mask: [batch, seq] of 1/0 -> [batch, 1, 1, seq] of 0 / lowest_value.
at::Tensor additive_padding_mask(const at::Tensor& attention_mask, c10::ScalarType dtype);

/// Decoder mask, as HF's `_prepare_4d_causal_attention_mask`: [batch, 1, query_len, key_len] with
/// 0 where query i may see key j (j <= i + key_len - query_len and key j not padding), else
/// lowest_value. `attention_mask` is [batch, key_len] or undefined (no padding).
at::Tensor causal_additive_mask(const at::Tensor& attention_mask, int64_t batch, int64_t query_len,
                                int64_t key_len, c10::ScalarType dtype, c10::Device device);

}  // namespace peft::nn
