// The RDP accountant against published values: TensorFlow Privacy's rdp_accountant_test (RDP of
// the sampled Gaussian; the (ε, δ) conversion; Abadi et al.'s MNIST setting under the classic
// conversion), Opacus's accountants test, and the noise search hitting its target; peft-privacy.
#include <cmath>
#include <cstdlib>
#include <fstream>

#include "peft/privacy/rdp_accountant.h"
#include "test_util.h"

namespace peft::test {
namespace {

using privacy::sampled_gaussian_rdp;

TEST(RdpAccountant, SampledGaussianRdpMatchesTensorFlowPrivacy) {
  // tensorflow_privacy/privacy/analysis/rdp_accountant_test.py: test_compute_rdp_no_data,
  // _no_sampling, _scalar and _sequence (compute_rdp(q, noise_multiplier, steps, orders)).
  EXPECT_EQ(sampled_gaussian_rdp(0, 10, 20), 0);
  EXPECT_DOUBLE_EQ(sampled_gaussian_rdp(1, 10, 20), 0.1);
  EXPECT_NEAR(10 * sampled_gaussian_rdp(0.1, 2, 5), 0.07737, 1e-5);
  const std::vector<double> orders = {1.5, 2.5, 5, 50, 100};
  const std::vector<double> expected = {0.00065, 0.001085, 0.00218075, 0.023846, 167.416307};
  for (size_t k = 0; k < orders.size(); ++k)
    EXPECT_NEAR(50 * sampled_gaussian_rdp(0.01, 2.5, orders[k]), expected[k], std::max(1e-5, 1e-6 * expected[k]))
        << "order " << orders[k];
  EXPECT_TRUE(std::isinf(sampled_gaussian_rdp(0.01, 0, 2)));
}

TEST(RdpAccountant, ConversionMatchesTensorFlowPrivacy) {
  // test_get_privacy_spent_check_target_delta: constant RDP 1.1 over orders 2..32 (pure DP) gives
  // ε = 1.32783806176 at the largest order; σ = 4.530877117 without sampling is exactly (1, 1e-6)-DP.
  std::vector<double> orders, rdp;
  for (int a = 2; a <= 32; ++a) {
    orders.push_back(a);
    rdp.push_back(1.1);
  }
  const auto pure = privacy::epsilon_from_rdp(orders, rdp, 1e-5);
  EXPECT_NEAR(pure.epsilon, 1.32783806176, 1e-9);
  EXPECT_EQ(pure.order, 32);
  std::vector<double> fine, gaussian;
  for (int i = 1001; i < 100000; ++i) {
    fine.push_back(0.001 * i);
    gaussian.push_back(sampled_gaussian_rdp(1, 4.530877117, fine.back()));
  }
  EXPECT_NEAR(privacy::epsilon_from_rdp(fine, gaussian, 1e-6).epsilon, 1.0, 1e-6);
}

TEST(RdpAccountant, PublishedDpSgdSettings) {
  // Opacus tests/accountants_test.py (test_rdp_accountant): σ = 1.5, q = 0.04, 90 epochs = 2250
  // steps, δ = 1e-5, Opacus's default orders: 7.3291 < ε < 7.3292.
  privacy::RdpAccountant opacus;
  for (int i = 0; i < 2250; ++i) opacus.step(1.5, 0.04);
  EXPECT_EQ(opacus.history().size(), 1u) << "steps at the same settings merge";
  const double eps = opacus.spent(1e-5).epsilon;
  EXPECT_GT(eps, 7.3291);
  EXPECT_LT(eps, 7.3292);
  // Abadi et al. 2016's MNIST setting, q = 0.01, σ = 4, 10,000 steps, δ = 1e-5, orders 2..32:
  // ε = 1.258575 at order 20 under the classic conversion (TF Privacy's test of that era); the
  // conversion of Balle et al. 2020 can only tighten it.
  std::vector<double> orders;
  for (int a = 2; a <= 32; ++a) orders.push_back(a);
  privacy::RdpAccountant abadi(orders);
  abadi.step(4, 0.01, 10000);
  const auto classic = abadi.spent(1e-5, privacy::Conversion::classic);
  EXPECT_NEAR(classic.epsilon, 1.258575, 1e-5);
  EXPECT_EQ(classic.order, 20);
  EXPECT_LE(abadi.spent(1e-5).epsilon, classic.epsilon);
}

TEST(RdpAccountant, NoiseSearchHitsTheTargetWithinOnePercent) {
  for (const double target : {1.0, 3.0, 8.0}) {
    const double sigma = privacy::noise_multiplier_for(target, 1e-5, 0.01, 3000);
    const double eps = privacy::epsilon_for(sigma, 0.01, 3000, 1e-5).epsilon;
    EXPECT_LE(eps, target) << target;
    EXPECT_GE(eps, 0.99 * target) << target;
  }
  // The inverse of the Opacus setting above.
  EXPECT_NEAR(privacy::noise_multiplier_for(7.3291, 1e-5, 0.04, 2250, 1e-4), 1.5, 1e-3);
  EXPECT_NE(error_of([] { privacy::noise_multiplier_for(-1, 1e-5, 0.01, 10); }).find("target_epsilon"), std::string::npos);
  EXPECT_NE(error_of([] { privacy::epsilon_for(1, 1.5, 10, 1e-5); }).find("sample rate"), std::string::npos);
  EXPECT_NE(error_of([] { privacy::epsilon_for(1, 0.1, 10, 0); }).find("delta"), std::string::npos);
}

TEST(RdpAccountant, HistoryRestoresTheSameEpsilon) {
  privacy::RdpAccountant a;
  a.step(1.1, 0.01, 100);
  a.step(0.9, 0.02, 50);
  a.step(0.9, 0.02, 50);
  ASSERT_EQ(a.history().size(), 2u);
  EXPECT_EQ(a.steps(), 200);
  privacy::RdpAccountant b;
  b.set_history(a.history());
  EXPECT_EQ(b.spent(1e-5).epsilon, a.spent(1e-5).epsilon);
  EXPECT_NE(error_of([&] { b.set_history({{1.0, 2.0, 3}}); }).find("sample rate"), std::string::npos);
}

#if defined(PEFT_PRIVACY_BIN)
/// The command's output (stdout and stderr), and its last non-empty line.
std::pair<std::string, std::string> output(const std::string& cmd, int* rc) {
  const std::string out = ::testing::TempDir() + "/peft_privacy_out.txt";
  *rc = std::system((cmd + " > " + out + " 2>&1").c_str());
  std::ifstream in(out);
  std::string all, line, last;
  while (std::getline(in, line)) {
    all += line + "\n";
    if (!line.empty()) last = line;
  }
  return {all, last};
}
std::string last_line(const std::string& cmd, int* rc) { return output(cmd, rc).second; }

TEST(RdpAccountant, PeftPrivacyPrintsTheNumberLast) {
  int rc = 0;
  const std::string bin = PEFT_PRIVACY_BIN;
  const double eps = std::stod(last_line(bin + " --sample-rate 0.04 --noise-multiplier 1.5 --steps 2250 --delta 1e-5", &rc));
  EXPECT_EQ(rc, 0);
  EXPECT_GT(eps, 7.329);
  EXPECT_LT(eps, 7.3293);
  const double sigma = std::stod(last_line(bin + " --sample-rate 0.04 --target-epsilon 7.3291 --steps 2250", &rc));
  EXPECT_EQ(rc, 0);
  EXPECT_NEAR(sigma, 1.5, 0.02);
  EXPECT_NE(output(bin + " --sample-rate 2 --noise-multiplier 1 --steps 3", &rc).first.find("--sample-rate"), std::string::npos);
  EXPECT_NE(rc, 0);
  EXPECT_NE(output(bin + " --sample-rate 0.1 --steps 3", &rc).first.find("--noise-multiplier or --target-epsilon"), std::string::npos);
  EXPECT_NE(rc, 0);
}
#endif

}  // namespace
}  // namespace peft::test
