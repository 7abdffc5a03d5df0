// Privacy accounting for DP-SGD: Rényi DP of the subsampled Gaussian mechanism (Mironov 2017;
// Mironov, Talwar, Zhang 2019), composed over steps, and its conversion to (ε, δ) as Opacus and
// TensorFlow Privacy do it (Balle et al. 2020), or the classic conversion of Abadi et al. 2016.
#pragma once

#include <cstdint>
#include <vector>

namespace peft::privacy {

/// Opacus's default RDP orders: 1.1, 1.2, ..., 10.9, then 12, 13, ..., 63.
const std::vector<double>& default_orders();

/// RDP at order `alpha` (> 1) of one step of the Gaussian mechanism with noise multiplier
/// `sigma` (noise std / sensitivity) on a Poisson subsample of rate `q` in [0, 1].
double sampled_gaussian_rdp(double q, double sigma, double alpha);

enum class Conversion {
  balle2020,  ///< ε = rdp + log((α-1)/α) - (log δ + log α)/(α-1)  (Opacus, TF Privacy today)
  classic,    ///< ε = rdp - log δ / (α-1)  (Mironov 2017; Abadi et al.'s moments accountant)
};

struct PrivacySpent {
  double epsilon = 0;
  double order = 0;  ///< the RDP order that gives the smallest ε
};

/// The smallest ε over the orders for `delta`, from each order's composed RDP.
PrivacySpent epsilon_from_rdp(const std::vector<double>& orders, const std::vector<double>& rdp, double delta,
                              Conversion conversion = Conversion::balle2020);

/// One recorded stretch of training: `steps` steps at one noise multiplier and sample rate.
struct PrivacyStep {
  double noise_multiplier = 0;
  double sample_rate = 0;
  int64_t steps = 0;
};

class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = default_orders());
  /// Records `steps` steps of DP-SGD (consecutive records at the same settings merge).
  void step(double noise_multiplier, double sample_rate, int64_t steps = 1);
  PrivacySpent spent(double delta, Conversion conversion = Conversion::balle2020) const;
  /// What was recorded, in order (for a trainer's state: restore with set_history).
  const std::vector<PrivacyStep>& history() const { return history_; }
  void set_history(std::vector<PrivacyStep> history);
  int64_t steps() const;

 private:
  std::vector<double> orders_;
  std::vector<PrivacyStep> history_;
};

/// ε after `steps` steps at noise multiplier `sigma` and sample rate `q`, for `delta`.
PrivacySpent epsilon_for(double sigma, double q, int64_t steps, double delta,
                         const std::vector<double>& orders = default_orders());
/// The smallest noise multiplier whose ε after `steps` steps at rate `q` is at most
/// `target_epsilon` for `delta`, found to within `tolerance` of the target ε (as Opacus's
/// get_noise_multiplier). Errors name the argument that makes it impossible.
double noise_multiplier_for(double target_epsilon, double delta, double q, int64_t steps, double tolerance = 0.01,
                            const std::vector<double>& orders = default_orders());

}  // namespace peft::privacy
