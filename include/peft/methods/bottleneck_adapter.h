// Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021; parallel: He et al. 2022):
//   sequential  h' = h + s · W_up f(W_down h + b_down) + s · b_up   on a sublayer's output h
//   parallel    h' = h + s · W_up f(W_down x + b_down) + s · b_up   from the sublayer's input x
// Presets: "houlsby" (after attention and after the FFN, layer norms trainable), "pfeiffer"
// (after the FFN only), "parallel" (beside both sublayers, s = 4). The zero-up init starts as
// the base exactly; Houlsby's near-identity init (truncated normal, std 1e-2, cut at ±2e-2)
// starts within its scale. Not mergeable (the nonlinearity sits between the projections).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/modules/linear.h>

#include "peft/methods/method.h"
#include "peft/nn/activations.h"
#include "peft/nn/block_adapters.h"

namespace peft::methods {

struct BottleneckAdapterConfig : MethodConfig {
  std::string preset = "pfeiffer";   ///< houlsby | pfeiffer | parallel
  int64_t reduction_factor = 16;     ///< bottleneck = hidden / reduction_factor ...
  int64_t bottleneck_size = 0;       ///< ... unless this is set
  std::string non_linearity;         ///< default: swish (houlsby), relu (pfeiffer, parallel)
  std::string init_weights = "zero_up";  ///< zero_up | houlsby
  double scaling = 0.0;              ///< default: 1 (sequential), 4 (parallel)
  bool train_layer_norms = false;    ///< houlsby trains them whatever this says
  /// Also an adapter after each decoder block's cross-attention (encoder-decoders; AdapterHub's
  /// cross_adapter); refused on a model without cross-attention.
  bool cross_adapter = false;
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> modules_to_save;

  std::string method() const override { return "adapter"; }
  std::string peft_type() const override { return "BOTTLENECK_ADAPTER"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<BottleneckAdapterConfig>(*this); }
  static std::shared_ptr<BottleneckAdapterConfig> from_json(const nlohmann::json& j);

  std::vector<std::string> slots() const;  ///< the block slots of the preset
  bool parallel() const { return preset == "parallel"; }
  std::string activation() const;
  double scale() const;
  int64_t bottleneck(int64_t hidden) const;
};

class BottleneckImpl : public nn::SublayerAdapter {
 public:
  BottleneckImpl(int64_t hidden, int64_t bottleneck, const std::string& activation, double scaling, bool parallel,
                 const std::string& init, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input, const at::Tensor& output) override;

  torch::nn::Linear down{nullptr};
  torch::nn::Linear up{nullptr};

 private:
  nn::Activation act_;
  double scaling_;
  bool parallel_;
};

Method bottleneck_adapter_method();

}  // namespace peft::methods
