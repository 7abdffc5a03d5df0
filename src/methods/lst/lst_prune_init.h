// LST's side-network initialization from a structurally pruned backbone: one set of kept
// residual coordinates for the whole network, and per layer the kept feed-forward neurons and
// per head the kept query/key and value/output dimensions (rotary pairs kept together), each
// chosen by the summed importance of the weights that read or write it. An encoder-decoder's
// self- and cross-attention choose their head dimensions apart.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "peft/models/model.h"

namespace peft::methods {

struct SidePruning {
  std::string model_type;
  models::ModelGeometry backbone, side;
  std::vector<int64_t> layers;  ///< backbone layer of each side block (an encoder-decoder's encoder)
  std::vector<int64_t> decoder_layers;  ///< encoder-decoders: the backbone decoder layer of each side decoder block
  std::string layers_pattern;   ///< "h" in "h.3.attn"
  std::string backbone_prefix;  ///< "transformer." in front of the bare model's names ("" for a bare backbone)
};

/// Fills every side-stack parameter (named as in the bare side model, e.g. "h.0.ln_1.weight")
/// from its backbone counterpart. `importance` holds one non-negative tensor per backbone
/// parameter name (|w| for magnitude, summed squared gradients for Fisher).
void init_side_from_backbone(const std::vector<std::pair<std::string, at::Tensor>>& side_params,
                             const std::map<std::string, at::Tensor>& backbone_params,
                             const std::map<std::string, at::Tensor>& importance, const SidePruning& spec);

}  // namespace peft::methods
