// DSEE (Chen et al. 2023, "Dually Sparsity-Embedded Efficient Tuning"), stage 1: each targeted
// weight gets a low-rank and a sparse update, W = W₀ + (α/r)(B A + S), S non-zero only on a
// fixed support Ω of N entries chosen from the pretrained W₀ — by a GreBsmo-style low-rank +
// sparse decomposition (the N largest entries of the sparse part) or at random. A ~ N(0, 0.02),
// B = 0, S = 0, so ΔW = 0 at init. S is stored compactly: N flat indices and N values.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "peft/methods/method.h"
#include "peft/methods/target_modules.h"
#include "peft/nn/linear_delta.h"

namespace peft::methods {

struct DseeConfig : MethodConfig {
  int64_t r = 4;
  double lora_alpha = 32.0;
  double lora_dropout = 0.0;
  int64_t num_sparse = 128;            ///< N, entries of S per matrix
  std::string sparse_init = "grebsmo";  ///< grebsmo | random
  int64_t grebsmo_iterations = 100;    ///< outer iterations of the decomposition (rank grows by 5 each)
  int64_t grebsmo_rank = 0;            ///< the low-rank part's largest rank (0: a quarter of the smaller side)
  double grebsmo_threshold = 0.01;     ///< |entries| below it leave the sparse part
  TargetModules target_modules;        ///< empty: queries and values
  std::vector<std::string> modules_to_save;

  std::string method() const override { return "dsee"; }
  std::string peft_type() const override { return "DSEE"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<DseeConfig>(*this); }
  static std::shared_ptr<DseeConfig> from_json(const nlohmann::json& j);
};

/// GreBsmo-style decomposition W ≈ U V + S (greedy rank growth by 5 up to `max_rank`, alternating
/// QR updates, S the residual with entries below `threshold` dropped); returns S [out, in].
at::Tensor grebsmo_sparse_part(const at::Tensor& weight, int64_t iterations, double threshold, int64_t max_rank);

/// The support Ω: flat indices (row * in + col) of the `n` largest |entries| of `scores`, ascending.
at::Tensor top_support(const at::Tensor& scores, int64_t n);

class DseeDelta : public nn::AdditiveWeightDelta {
 public:
  DseeDelta(int64_t in_features, int64_t out_features, const at::Tensor& support, const DseeConfig& config,
            const at::TensorOptions& options);
  at::Tensor adapt_output(const at::Tensor& x, const at::Tensor& y) override;
  /// (α/r)(B A + S) as [out, in] (times the pruning mask, once there is one).
  at::Tensor delta_weight() const override;
  /// Stage 2: from now on the update is masked like the pruned weight it adds to (bool [out, in]).
  void set_mask(const at::Tensor& keep) { mask_ = keep; }

  at::Tensor lora_A;          ///< [r, in]
  at::Tensor lora_B;          ///< [out, r]
  at::Tensor sparse_values;   ///< [N]
  at::Tensor sparse_indices;  ///< [N] int64 flat indices into [out, in] (a buffer)

 private:
  int64_t in_, out_;
  double scaling_, dropout_;
  at::Tensor mask_;  // stage 2 only; not part of the delta
};

Method dsee_method();

}  // namespace peft::methods
