#include "peft/privacy/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "peft/core/error.h"

namespace peft::privacy {
namespace {
constexpr const char* kC = "privacy";
constexpr double kInf = std::numeric_limits<double>::infinity();

/// log(exp(a) + exp(b)), exact at -inf.
double log_add(double a, double b) {
  if (a == -kInf) return b;
  if (b == -kInf) return a;
  const double hi = std::max(a, b), lo = std::min(a, b);
  return hi + std::log1p(std::exp(lo - hi));
}

/// log(exp(a) - exp(b)) for a >= b.
double log_sub(double a, double b) {
  if (b == -kInf) return a;
  if (a == b) return -kInf;
  PEFT_CHECK(a > b, kC, "internal: log_sub of a larger term");
  return a + std::log1p(-std::exp(b - a));
}

/// log(erfc(x)), with the asymptotic series where erfc underflows.
double log_erfc(double x) {
  const double r = std::erfc(x);
  if (r > 0) return std::log(r);
  return -std::log(M_PI) / 2 - std::log(x) - x * x - 0.5 / (x * x) + 0.625 / std::pow(x, 4) - 37.0 / 24.0 / std::pow(x, 6) +
         353.0 / 64.0 / std::pow(x, 8);
}

/// log A_α for an integer α: the binomial expansion (every term positive).
double log_a_integer(double q, double sigma, int64_t alpha) {
  double log_a = -kInf;
  for (int64_t i = 0; i <= alpha; ++i) {
    const double log_binom = std::lgamma(alpha + 1.0) - std::lgamma(i + 1.0) - std::lgamma(alpha - i + 1.0);
    const double log_coef = log_binom + i * std::log(q) + (alpha - i) * std::log1p(-q);
    log_a = log_add(log_a, log_coef + static_cast<double>(i * i - i) / (2 * sigma * sigma));
  }
  return log_a;
}

/// log A_α for a fractional α: the two-sided series of Mironov, Talwar and Zhang (2019), with
/// generalised binomial coefficients (their signs alternate past α).
double log_a_fractional(double q, double sigma, double alpha) {
  double log_a0 = -kInf, log_a1 = -kInf;
  const double z0 = sigma * sigma * std::log(1 / q - 1) + 0.5;
  double coef = 1;  // binom(alpha, i), by the recurrence binom(α, i+1) = binom(α, i)(α - i)/(i + 1)
  for (int64_t i = 0;; ++i) {
    const double log_coef = std::log(std::abs(coef));
    const double j = alpha - static_cast<double>(i);
    const double di = static_cast<double>(i);
    const double log_t0 = log_coef + di * std::log(q) + j * std::log1p(-q);
    const double log_t1 = log_coef + j * std::log(q) + di * std::log1p(-q);
    const double log_e0 = std::log(0.5) + log_erfc((di - z0) / (std::sqrt(2.0) * sigma));
    const double log_e1 = std::log(0.5) + log_erfc((z0 - j) / (std::sqrt(2.0) * sigma));
    const double log_s0 = log_t0 + (di * di - di) / (2 * sigma * sigma) + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / (2 * sigma * sigma) + log_e1;
    if (coef > 0) {
      log_a0 = log_add(log_a0, log_s0);
      log_a1 = log_add(log_a1, log_s1);
    } else {
      log_a0 = log_sub(log_a0, log_s0);
      log_a1 = log_sub(log_a1, log_s1);
    }
    if (std::max(log_s0, log_s1) < -30) break;
    PEFT_CHECK(i < 100000, kC, "the RDP series did not converge (q={}, sigma={}, order={})", q, sigma, alpha);
    coef *= (alpha - di) / (di + 1);
  }
  return log_add(log_a0, log_a1);
}

}  // namespace

const std::vector<double>& default_orders() {
  static const std::vector<double> orders = [] {
    std::vector<double> o;
    for (int x = 1; x < 100; ++x) o.push_back(1 + x / 10.0);
    for (int a = 12; a < 64; ++a) o.push_back(a);
    return o;
  }();
  return orders;
}

double sampled_gaussian_rdp(double q, double sigma, double alpha) {
  PEFT_CHECK(q >= 0 && q <= 1, kC, "sample rate must be in [0, 1], found {}", q);
  PEFT_CHECK(sigma >= 0, kC, "noise multiplier must be >= 0, found {}", sigma);
  PEFT_CHECK(alpha > 1, kC, "RDP order must be > 1, found {}", alpha);
  if (q == 0) return 0;
  if (sigma == 0 || std::isinf(alpha)) return kInf;
  if (q == 1) return alpha / (2 * sigma * sigma);
  const double log_a = alpha == std::floor(alpha) ? log_a_integer(q, sigma, static_cast<int64_t>(alpha))
                                                  : log_a_fractional(q, sigma, alpha);
  return log_a / (alpha - 1);
}

PrivacySpent epsilon_from_rdp(const std::vector<double>& orders, const std::vector<double>& rdp, double delta,
                              Conversion conversion) {
  PEFT_CHECK(delta > 0 && delta < 1, kC, "delta must be in (0, 1), found {}", delta);
  PEFT_CHECK(orders.size() == rdp.size() && !orders.empty(), kC, "{} orders for {} RDP values", orders.size(), rdp.size());
  PrivacySpent best{kInf, 0};
  for (size_t k = 0; k < orders.size(); ++k) {
    const double a = orders[k], r = rdp[k];
    double eps = kInf;
    if (conversion == Conversion::classic) {
      eps = r - std::log(delta) / (a - 1);
    } else if (delta * delta + std::expm1(-r) >= 0) {
      eps = 0;  // the bound holds with ε = 0 already
    } else if (a > 1.01) {  // unstable as α -> 1, and not useful there
      eps = r + std::log1p(-1 / a) - std::log(delta * a) / (a - 1);
    }
    if (eps < best.epsilon) best = {std::max(0.0, eps), a};
  }
  return best;
}

RdpAccountant::RdpAccountant(std::vector<double> orders) : orders_(std::move(orders)) {
  PEFT_CHECK(!orders_.empty(), kC, "no RDP orders");
  for (double a : orders_) PEFT_CHECK(a > 1, kC, "RDP orders must be > 1, found {}", a);
}

void RdpAccountant::step(double noise_multiplier, double sample_rate, int64_t steps) {
  PEFT_CHECK(steps >= 0, kC, "steps must be >= 0, found {}", steps);
  sampled_gaussian_rdp(sample_rate, noise_multiplier, orders_.front());  // validates both
  if (!history_.empty() && history_.back().noise_multiplier == noise_multiplier && history_.back().sample_rate == sample_rate) {
    history_.back().steps += steps;
  } else {
    history_.push_back({noise_multiplier, sample_rate, steps});
  }
}

void RdpAccountant::set_history(std::vector<PrivacyStep> history) {
  RdpAccountant check(orders_);
  for (const auto& h : history) check.step(h.noise_multiplier, h.sample_rate, h.steps);
  history_ = std::move(history);
}

int64_t RdpAccountant::steps() const {
  int64_t n = 0;
  for (const auto& h : history_) n += h.steps;
  return n;
}

PrivacySpent RdpAccountant::spent(double delta, Conversion conversion) const {
  std::vector<double> rdp(orders_.size(), 0.0);
  for (const auto& h : history_)
    for (size_t k = 0; k < orders_.size(); ++k)
      rdp[k] += static_cast<double>(h.steps) * sampled_gaussian_rdp(h.sample_rate, h.noise_multiplier, orders_[k]);
  return epsilon_from_rdp(orders_, rdp, delta, conversion);
}

PrivacySpent epsilon_for(double sigma, double q, int64_t steps, double delta, const std::vector<double>& orders) {
  RdpAccountant a(orders);
  a.step(sigma, q, steps);
  return a.spent(delta);
}

double noise_multiplier_for(double target_epsilon, double delta, double q, int64_t steps, double tolerance,
                            const std::vector<double>& orders) {
  PEFT_CHECK(target_epsilon > 0 && std::isfinite(target_epsilon), kC, "target_epsilon must be > 0, found {}", target_epsilon);
  PEFT_CHECK(steps >= 1, kC, "steps must be >= 1, found {}", steps);
  PEFT_CHECK(tolerance > 0, kC, "tolerance must be > 0, found {}", tolerance);
  auto eps = [&](double sigma) { return epsilon_for(sigma, q, steps, delta, orders).epsilon; };
  double lo = 0, hi = 10, eps_hi = eps(hi);
  while (eps_hi > target_epsilon) {
    lo = hi;
    hi *= 2;
    PEFT_CHECK(hi < 1e6, kC, "no noise multiplier below 1e6 reaches epsilon {} (delta {}, sample rate {}, {} steps)",
               target_epsilon, delta, q, steps);
    eps_hi = eps(hi);
  }
  // Bisect until ε(hi) is within the tolerance below the target (ε falls as σ grows).
  for (int it = 0; it < 200 && eps_hi < target_epsilon - tolerance * target_epsilon; ++it) {
    const double mid = (lo + hi) / 2, eps_mid = eps(mid);
    if (eps_mid > target_epsilon) {
      lo = mid;
    } else {
      hi = mid;
      eps_hi = eps_mid;
    }
  }
  return hi;
}

}  // namespace peft::privacy
