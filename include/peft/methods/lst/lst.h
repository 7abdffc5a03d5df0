// LST, Ladder Side-Tuning (Sung et al. 2022): a small side network of the backbone's own block
// type at width d/r reads the frozen backbone through "ladders" — per-layer down-projections of
// the backbone's block outputs, fused with gates μ_i = σ(α_i / T):
//   h_side ← μ_i · h_side + (1 − μ_i) · Down_i(h_backbone^i), then side block i,
// starting from Down_first(embeddings); on an encoder-decoder (T5) the side is a small T5 whose
// encoder and decoder each read their backbone stack's ladders (the side decoder cross-attends
// to the side encoder). The side's final hidden state is projected back to d
// (Linear(d/r, d)) and fed to the frozen head (or mixed with the backbone's by one more gate).
// The backbone is read through hidden-state taps only: no gradient path enters it, so training
// keeps none of its activations — the method's memory saving. Side weights start from a
// structurally pruned copy of the backbone (magnitude or Fisher importance) or at random.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "peft/methods/method.h"
#include "peft/models/model.h"

namespace peft::methods {

struct LstConfig : MethodConfig {
  int64_t reduction_factor = 8;     ///< side widths are d/r, d_ff/r, head_dim/r (LST's task_reduction_factor)
  double gate_alpha = 0.0;          ///< initial α of every gate (μ = σ(α/T) = 0.5)
  double gate_temperature = 0.1;    ///< T
  /// Backbone layers that get a side block and a ladder (layer dropping); empty: every layer.
  std::vector<int64_t> side_layers;
  /// Encoder-decoders: the decoder layers that get a side block (side_layers names the encoder's);
  /// empty: every layer.
  std::vector<int64_t> side_decoder_layers;
  /// "magnitude" | "fisher" (pruned backbone; Fisher needs batches, see lst_fisher_init) | "random"
  std::string side_init = "magnitude";
  int64_t fisher_batches = 8;       ///< batches peft-train spends on Fisher importance
  /// "side": the head reads Up(h_side); "gated": μ·h_backbone + (1 − μ)·Up(h_side) with its own gate.
  std::string output = "side";

  std::string method() const override { return "lst"; }
  std::string peft_type() const override { return "LST"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<LstConfig>(*this); }
  static std::shared_ptr<LstConfig> from_json(const nlohmann::json& j);
};

/// The side network's config.json: the backbone's with widths divided by r and one layer per
/// side block (`side_decoder_layers`: an encoder-decoder's side decoder; 0 builds an encoder
/// only); errors name the size that r does not divide.
nlohmann::json lst_side_config(const nlohmann::json& backbone_config, const models::ModelGeometry& geometry,
                               int64_t reduction_factor, int64_t side_layers, int64_t side_decoder_layers = 0);

/// Re-initializes the side blocks of `adapter` from the backbone pruned by Fisher importance
/// (squared loss gradients of the backbone's weights summed over `batches`).
void lst_fisher_init(PeftModel& model, const std::string& adapter, const std::vector<models::ModelInputs>& batches);

Method lst_method();

}  // namespace peft::methods
