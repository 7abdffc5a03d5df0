// KAdaptation (He et al., AAAI 2023): the update of each targeted projection is a sum of
// Kronecker products, ΔW = Σ_i A_i ⊗ B_i, with the n "slow" rules A_i ∈ R^{n×n} shared by every
// layer of the same projection kind (one set for the queries, one for the values, ...) and the
// "fast" B_i = u_i v_iᵀ rank-1 per layer; y = W x + s·ΔW x + b with a trainable bias. A_i is
// itself rank-1 (left ⊗ right, as the paper's code factorizes it). Mergeable.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "peft/methods/method.h"
#include "peft/methods/target_modules.h"
#include "peft/nn/linear_delta.h"

namespace peft::methods {

struct KAdaptationConfig : MethodConfig {
  TargetModules target_modules;  ///< empty: the queries and values of every attention layer
  int64_t phm_dim = 32;          ///< n: the number of Kronecker terms; divides every target's in and out
  double scaling = 160.0;        ///< s (the paper's code: α/r·5 = 128/4·5)
  double weight_dropout = 0.0;   ///< dropout on ΔW while training (the paper's code uses 0.5)
  bool train_bias = true;        ///< a trainable bias on targets that have one (merged into it)
  std::vector<std::string> modules_to_save;

  std::string method() const override { return "kadaptation"; }
  std::string peft_type() const override { return "KADAPTATION"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<KAdaptationConfig>(*this); }
  static std::shared_ptr<KAdaptationConfig> from_json(const nlohmann::json& j);
};

/// The rules shared by every layer of one projection kind: A_i = left[i] right[i]ᵀ.
class KroneckerRuleImpl : public torch::nn::Module {
 public:
  KroneckerRuleImpl(int64_t n, const at::TensorOptions& options);
  at::Tensor left, right;  ///< [n, n] each (row i: the factors of A_i)
};
TORCH_MODULE(KroneckerRule);

class KAdaptationDelta : public nn::AdditiveWeightDelta {
 public:
  /// `owns_rule`: the first layer of a kind registers (and saves) the shared rule.
  KAdaptationDelta(int64_t in_features, int64_t out_features, KroneckerRule rule, bool owns_rule, bool with_bias,
                   const KAdaptationConfig& config, const at::TensorOptions& options);
  at::Tensor adapt_output(const at::Tensor& x, const at::Tensor& y) override;
  void merge_into(at::Tensor& weight_out_in, at::Tensor& bias) override;
  void unmerge_from(at::Tensor& weight_out_in, at::Tensor& bias) override;
  /// s·ΔW as [out, in].
  at::Tensor delta_weight() const override;

  at::Tensor fast_u;  ///< [n, out / n]: Glorot-initialized
  at::Tensor fast_v;  ///< [n, in / n]: zeros, so ΔW = 0 at init while every factor still gets a gradient
  at::Tensor bias;    ///< [out] zeros (undefined without train_bias or when the layer has no bias)

 private:
  KroneckerRule rule_;
  double scaling_, weight_dropout_;
};

Method kadaptation_method();

}  // namespace peft::methods
