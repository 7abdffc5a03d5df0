// generate_batch's loop for encoder-decoders (T5): the prompts are the encoder's input, encoded
// once; the decoder starts from the model's decoder_start_token and, with the cache, runs one
// token per step over its cached self-attention keys and the cross-attention keys of the first step.
#pragma once

#include <optional>
#include <vector>

#include <ATen/core/Generator.h>
#include <c10/core/Device.h>

#include "peft/generate.h"

namespace peft {

/// Called by generate_batch with the model in eval mode and gradients off.
std::vector<GenerationResult> generate_encoder_decoder(PeftModel& model, const std::vector<std::vector<int64_t>>& prompts,
                                                       const GenerationConfig& config, std::optional<at::Generator>& gen,
                                                       c10::Device device);

}  // namespace peft
