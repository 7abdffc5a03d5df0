// Compacter (Karimi Mahabadi et al. 2021): bottleneck adapters whose projections are PHM layers,
//   y = x H + b,  H = Σ_{i=1..n} A_i ⊗ B_i,  A_i ∈ R^{n×n},  B_i = s_i t_iᵀ (rank r) ∈ R^{(in/n)×(out/n)},
// with the A_i ("PHM rule") shared by every layer of the adapter. "compacter": after attention
// and after the FFN; "compacter++": after the FFN only; layer norms train too. The up
// projection's t factors start at zero, so the model starts as the base exactly ("zero_up");
// "compacter" uses the paper's init (Glorot-uniform s, t; A ~ N(0, 0.01)).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "peft/methods/method.h"
#include "peft/nn/activations.h"
#include "peft/nn/block_adapters.h"

namespace peft::methods {

struct CompacterConfig : MethodConfig {
  std::string variant = "compacter";  ///< compacter | compacter++
  int64_t phm_dim = 4;                ///< n: must divide the hidden size and the bottleneck size
  int64_t reduction_factor = 32;
  int64_t bottleneck_size = 0;        ///< overrides reduction_factor when > 0
  int64_t phm_rank = 1;
  bool factorized_phm = true;         ///< false: full B_i
  std::string non_linearity = "gelu_new";
  std::string init_weights = "zero_up";  ///< zero_up | compacter
  bool train_layer_norms = true;
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> modules_to_save;

  std::string method() const override { return "compacter"; }
  std::string peft_type() const override { return "COMPACTER"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<CompacterConfig>(*this); }
  static std::shared_ptr<CompacterConfig> from_json(const nlohmann::json& j);

  int64_t bottleneck(int64_t hidden) const;
  std::vector<std::string> slots() const;
  /// Trainable tensors the adapters add to a model of `layers` blocks of width `hidden` (layer norms excluded).
  int64_t adapter_parameters(int64_t hidden, int64_t layers) const;
};

/// The shared PHM rule: A, [n, n, n].
class PhmRuleImpl : public torch::nn::Module {
 public:
  PhmRuleImpl(int64_t n, const at::TensorOptions& options);
  at::Tensor weight;
};
TORCH_MODULE(PhmRule);

class PhmLinearImpl : public torch::nn::Module {
 public:
  /// `own_rule`: register `rule` here (once per adapter) so that it is saved and counted once.
  PhmLinearImpl(int64_t in, int64_t out, PhmRule rule, bool own_rule, const CompacterConfig& config, bool zero_out,
                const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor kron_weight() const;  ///< H as [in, out]

  at::Tensor phm_s, phm_t, phm_w, b;  ///< s [n, in/n, r], t [n, r, out/n] (factorized) or w [n, in/n, out/n]

 private:
  PhmRule rule_;
  int64_t n_;
};
TORCH_MODULE(PhmLinear);

class PhmAdapterImpl : public nn::SublayerAdapter {
 public:
  PhmAdapterImpl(int64_t hidden, int64_t bottleneck, PhmRule rule, bool own_rule, const CompacterConfig& config,
                 const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input, const at::Tensor& output) override;
  PhmLinear down{nullptr}, up{nullptr};

 private:
  nn::Activation act_;
};

Method compacter_method();

}  // namespace peft::methods
