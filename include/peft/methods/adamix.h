// AdaMix (Wang et al. 2022): a mixture of bottleneck adapters after each FFN. Training routes
// every forward pass through one randomly drawn down expert and one up expert (the same for the
// whole batch; by default the up projection is shared); a consistency loss — the symmetric KL
// between two independently routed passes — is added by the trainer. At evaluation the experts
// are averaged, so inference costs one adapter; adamix_deploy() writes that average as a
// single-expert adapter, the size of one adapter.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "peft/methods/method.h"
#include "peft/nn/activations.h"
#include "peft/nn/block_adapters.h"

namespace peft::methods {

struct AdaMixConfig : MethodConfig {
  int64_t num_experts = 4;
  int64_t bottleneck_size = 16;
  bool sharing_down = false;  ///< one down projection for all experts
  bool sharing_up = true;     ///< one up projection for all experts (the released scripts' setting)
  std::string non_linearity = "gelu";
  double consistency_weight = 1.0;  ///< λ of the symmetric-KL term (0: off)
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> modules_to_save;

  std::string method() const override { return "adamix"; }
  std::string peft_type() const override { return "ADAMIX"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<AdaMixConfig>(*this); }
  static std::shared_ptr<AdaMixConfig> from_json(const nlohmann::json& j);
};

class AdaMixAdapterImpl : public nn::SublayerAdapter {
 public:
  AdaMixAdapterImpl(int64_t hidden, const AdaMixConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input, const at::Tensor& output) override;

  at::Tensor down_weight, down_bias;  ///< [experts, m, d], [experts, m]
  at::Tensor up_weight, up_bias;      ///< [experts, d, m], [experts, d]

 private:
  nn::Activation act_;
};

/// 0.5 · [KL(p1 ‖ stopgrad p2) + KL(p2 ‖ stopgrad p1)] over the last dimension, batch-mean.
at::Tensor symmetric_kl(const at::Tensor& logits1, const at::Tensor& logits2);

/// Adds `target` as a one-expert AdaMix adapter holding the average of `source`'s experts (what
/// the model computes at evaluation), for deployment at the size and cost of one adapter.
void adamix_deploy(PeftModel& model, const std::string& source, const std::string& target);

Method adamix_method();

}  // namespace peft::methods
