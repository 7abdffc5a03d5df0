// Shared by the decoding loops (generate, encoder-decoder generation, serve::ContinuousBatcher):
// one forward over the rows, and the logits of each row's last position.
#pragma once

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "peft/models/io.h"

namespace peft {
class PeftModel;

/// One forward: a mixed-adapter batch when `names` (one per row) is given, else the active adapters.
models::ModelOutput forward_rows(PeftModel& model, const models::ModelInputs& in, const std::vector<std::string>& names);

/// [batch, vocab] float32 on the CPU from a forward's logits [batch, seq, vocab]; anything else is
/// an error naming the model (generation needs a causal LM).
at::Tensor next_logits(const at::Tensor& logits, PeftModel& model);

}  // namespace peft
