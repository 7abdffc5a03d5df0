// A side network runs beside a frozen backbone and reads it only through the hidden-state taps
// (ModelInputs::stream_hook / final_hidden_hook): no gradient path enters the backbone, so none
// of its activations are kept for backward (LST).
#pragma once

#include <string>

#include <torch/nn/module.h>

#include "peft/models/io.h"

namespace peft::nn {

class SideNetwork : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;
  /// The batch with the hooks that run this network beside the backbone's forward.
  virtual models::ModelInputs prepare(const models::ModelInputs& inputs) = 0;
  /// Why the backbone's blocks must not be checkpointed while this network trains (it feeds
  /// tensors computed outside the blocks into them), or "" when they may be.
  virtual std::string checkpointing_conflict() const { return {}; }
  /// Whether generation may decode with a key/value cache while this network runs (false: it
  /// needs the whole sequence each step, so generate() recomputes it).
  virtual bool decodes_with_kv_cache() const { return true; }
};

}  // namespace peft::nn
