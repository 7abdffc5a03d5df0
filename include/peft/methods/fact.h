// FacT (Jie & Deng, AAAI 2023, "Factor Tuning"): every targeted weight increment of the model is
// cut into d×d slices (d = hidden size; a d→4d projection gives 4) and the whole stack of slices
// is one 3-D tensor, factorized with factors shared by all of them:
//   FacT-TT: ΔW_s = s · V Σ_s Uᵀ, U, V ∈ R^{d×r} shared, Σ_s ∈ R^{r×r} per slice;
//   FacT-TK: Σ_s = Σ_k C[:, :, k] P[k, s], with a shared core C ∈ R^{r×r×r} and P ∈ R^{r×S}.
// V starts at zero (ΔW = 0). Mergeable. The shared factors live in (and are saved with) the
// first targeted layer.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "peft/methods/method.h"
#include "peft/methods/target_modules.h"
#include "peft/nn/linear_delta.h"

namespace peft::methods {

struct FacTConfig : MethodConfig {
  std::string variant = "tt";    ///< tt | tk
  int64_t rank = 8;              ///< r
  double scaling = 1.0;          ///< s (the paper tunes it per task, 0.01 … 100)
  double dropout = 0.0;          ///< on Σ·Uᵀx while training (the paper's code: 0.1)
  TargetModules target_modules;  ///< empty: every block projection whose sizes are multiples of d
  std::vector<std::string> modules_to_save;

  std::string method() const override { return "fact"; }
  std::string peft_type() const override { return "FACT"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<FacTConfig>(*this); }
  static std::shared_ptr<FacTConfig> from_json(const nlohmann::json& j);
};

/// The factors every slice shares.
class FacTSharedImpl : public torch::nn::Module {
 public:
  FacTSharedImpl(int64_t d, int64_t r, const std::string& variant, int64_t slices, const at::TensorOptions& options);
  at::Tensor u;  ///< [r, d] (FacTu: x -> r)
  at::Tensor v;  ///< [d, r] (FacTv: r -> d), zeros
  at::Tensor core;     ///< TK: [r, r, r]
  at::Tensor factors;  ///< TK: [r, slices]
};
TORCH_MODULE(FacTShared);

class FacTDelta : public nn::AdditiveWeightDelta {
 public:
  /// A layer of `in`/`out` = ki·d / ko·d covering slices [first, first + ko·ki) of the stack.
  FacTDelta(int64_t in_features, int64_t out_features, FacTShared shared, bool owns_shared, int64_t first_slice,
            const FacTConfig& config, const at::TensorOptions& options);
  at::Tensor adapt_output(const at::Tensor& x, const at::Tensor& y) override;
  at::Tensor delta_weight() const override;

  at::Tensor sigma;  ///< TT: [ko, ki, r, r] (out rank × in rank per slice)

 private:
  /// Σ of this layer's slices, [ko, ki, r, r].
  at::Tensor slice_cores() const;

  FacTShared shared_;
  int64_t ko_, ki_, first_;
  double scaling_, dropout_;
};

Method fact_method();

/// Slices the default targets of a model of this geometry make (the stack's depth S).
int64_t fact_default_slices(const models::ModelGeometry& geometry);

}  // namespace peft::methods
