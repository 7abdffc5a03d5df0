// Cross-entropy over a large vocabulary without a dense float32 copy of the logits: rows are
// upcast a chunk at a time in forward (keeping only each row's log-sum-exp) and again in backward,
// where the gradient is written straight in the logits' dtype. For half-precision logits this
// keeps one [N, V] tensor in their dtype instead of three float32 ones (upcast, log-softmax, its
// gradient): what a causal LM's loss costs beside a quantized base.
#pragma once

#include <ATen/core/Tensor.h>

namespace peft::nn {

/// Mean over the rows whose target is not `ignore_index` of −log softmax(logits)[target], computed
/// in float32 for half-precision logits (float32 / float64 in their own dtype). `logits` [N, V],
/// `targets` [N] integer. No valid row: NaN (as torch's mean reduction).
at::Tensor chunked_cross_entropy(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index = -100);

}  // namespace peft::nn
