// Shared by the decoding loops (generate, serve::ContinuousBatcher): the logits of each row's
// last position.
#pragma once

#include <ATen/core/Tensor.h>

namespace peft {
class PeftModel;

/// [batch, vocab] float32 on the CPU from a forward's logits [batch, seq, vocab]; anything else is
/// an error naming the model (generation needs a causal LM).
at::Tensor next_logits(const at::Tensor& logits, PeftModel& model);

}  // namespace peft
