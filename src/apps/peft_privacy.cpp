// peft-privacy: the privacy of DP-SGD from its settings, like TensorFlow Privacy's
// compute_dp_sgd_privacy — ε for a noise multiplier, or the noise multiplier for a target ε.
// The last line printed is the number alone.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "peft/core/error.h"
#include "peft/core/process.h"
#include "peft/privacy/rdp_accountant.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Privacy of DP-SGD (RDP accountant of the subsampled Gaussian mechanism): epsilon for a noise "
               "multiplier, or the noise multiplier for a target epsilon. The last line is the number alone.",
               "peft-privacy"};
  double q = 0, sigma = 0, delta = 1e-5, target = 0, tolerance = 0.01;
  int64_t steps = 0;
  std::string conversion = "balle2020";
  app.add_option("--sample-rate", q, "probability that an example is in a batch (Poisson sampling)")->required()
      ->check(CLI::Range(0.0, 1.0));
  auto* s = app.add_option("--noise-multiplier", sigma, "noise std / clipping norm");
  auto* t = app.add_option("--target-epsilon", target, "print the noise multiplier that reaches this epsilon instead");
  s->excludes(t);
  app.add_option("--steps", steps, "DP-SGD steps")->required()->check(CLI::PositiveNumber);
  app.add_option("--delta", delta, "target delta")->capture_default_str();
  app.add_option("--tolerance", tolerance, "with --target-epsilon: relative distance below the target accepted")
      ->capture_default_str();
  app.add_option("--conversion", conversion, "RDP -> (epsilon, delta): balle2020 (Opacus, TF Privacy) or classic")
      ->capture_default_str()->check(CLI::IsMember({"balle2020", "classic"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  PEFT_CHECK(s->count() + t->count() == 1, "privacy", "give --noise-multiplier or --target-epsilon");
  if (t->count()) {
    const double found = peft::privacy::noise_multiplier_for(target, delta, q, steps, tolerance);
    const auto eps = peft::privacy::epsilon_for(found, q, steps, delta);
    fmt::print("noise multiplier {:.6g} gives epsilon {:.6g} (target {}) for delta {} after {} steps at sample rate {} "
               "(order {})\n{:.6g}\n",
               found, eps.epsilon, target, delta, steps, q, eps.order, found);
    return 0;
  }
  peft::privacy::RdpAccountant a;
  a.step(sigma, q, steps);
  const auto eps = a.spent(delta, conversion == "classic" ? peft::privacy::Conversion::classic
                                                          : peft::privacy::Conversion::balle2020);
  fmt::print("epsilon {:.6g} for delta {} after {} steps at sample rate {}, noise multiplier {} (best RDP order {})\n{:.6g}\n",
             eps.epsilon, delta, steps, q, sigma, eps.order, eps.epsilon);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return peft::core::run_main("peft-privacy", [&] { return run(argc, argv); });
}
