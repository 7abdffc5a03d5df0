// S3PET / S3Delta (Hu et al. 2022): search where to put a tiny delta under a parameter budget,
// then train the found structure from scratch.
//
// Search space: at every position a candidate module — LoRA r=1 on a block projection, an added
// bias on it (BitFit), LN-tuning of a norm, a low-rank bottleneck adapter after a sublayer — each
// with n_i parameters and an architecture logit α_i. A shifted global sigmoid
// p_i = σ((α_i − b)/β), with b solved every step so that Σ p_i n_i = B, gives each candidate's
// keep probability; gates z_i are hard-concrete samples while searching (z_i = p_i in eval mode)
// and multiply the candidate's output. Bi-level optimization: the modules' weights on training
// batches, α on held-out batches (first-order by default; DARTS's unrolled second-order step as an
// option). Finally modules are kept greedily by p_i while Σ n_i ≤ B and written as a fixed
// "structure": an S3PET config that attaches exactly those modules, ungated, freshly initialized.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "peft/methods/method.h"
#include "peft/models/model.h"

namespace peft::data {
class BatchSource;
}

namespace peft::methods {

/// One module of the search space (or of a found structure).
struct S3petCandidate {
  std::string kind;    ///< "lora" | "bias" | "ln" | "adapter"
  std::string module;  ///< projection / norm / block module name
  std::string slot;    ///< adapters: "attention" | "ffn"
  int64_t params = 0;
  nlohmann::json to_json() const;
};

struct S3petSearchSettings {
  std::string strategy = "darts";  ///< "darts" (bi-level search) | "random" (a random structure, same budget)
  int64_t steps = 300;
  double lr = 3e-3;                ///< the candidate modules' learning rate
  double alpha_lr = 0.1;           ///< the architecture logits' learning rate
  double validation_fraction = 0.2;  ///< training examples held out for the α updates
  bool second_order = false;       ///< DARTS's unrolled step for the α gradient
  uint64_t seed = 0;
  int64_t log_every = 50;
};

struct S3petConfig : MethodConfig {
  double budget = 1e-3;            ///< parameters kept, relative to the backbone's
  std::vector<std::string> search_space = {"lora", "bias", "ln", "adapter"};
  int64_t lora_rank = 1;
  double lora_alpha = 1.0;
  int64_t adapter_size = 1;        ///< the low-rank adapters' bottleneck
  double beta = 1.0;               ///< the shifted sigmoid's temperature
  /// "detach" (S3Delta: b is a constant, p renormalized by Σp) | "implicit" (the exact gradient
  /// of p through b(α), by the implicit function theorem)
  std::string shift_gradient = "detach";
  S3petSearchSettings search;
  /// A found structure: attach exactly these modules, ungated. Empty: attach the whole gated
  /// search space (the search itself).
  std::vector<S3petCandidate> structure;

  std::string method() const override { return "s3pet"; }
  std::string peft_type() const override { return "S3PET"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<S3petConfig>(*this); }
  static std::shared_ptr<S3petConfig> from_json(const nlohmann::json& j);
};

/// The search space of a config on a model (every candidate, n_i filled).
std::vector<S3petCandidate> s3pet_candidates(PeftModel& model, const S3petConfig& config);
/// The absolute budget B: config.budget × the backbone's parameter count.
int64_t s3pet_budget(PeftModel& model, const S3petConfig& config);
/// Keeps candidates in the given order while they fit the budget (Σ n_i ≤ B).
std::vector<S3petCandidate> s3pet_fit_budget(const std::vector<S3petCandidate>& ordered, int64_t budget);

struct S3petSearchResult {
  std::shared_ptr<S3petConfig> structure;          ///< the config to retrain
  std::vector<std::pair<S3petCandidate, double>> ranking;  ///< every candidate with its final p_i, best first
  std::vector<double> train_losses, validation_losses;
};

/// Runs the bi-level search on `adapter` (attached from a config without structure).
S3petSearchResult s3pet_search(PeftModel& model, const std::string& adapter,
                               const std::function<models::ModelInputs()>& train_batch,
                               const std::function<models::ModelInputs()>& validation_batch);
/// A random structure of the same budget (candidates in a seeded random order, kept while they fit).
std::shared_ptr<S3petConfig> s3pet_random_structure(PeftModel& model, const S3petConfig& config);

/// The structure a config without one selects: for strategy "darts" the bi-level search on a
/// temporary adapter, the weights learning on one part of `batches` and α on a held-out part
/// (search.validation_fraction, split by search.seed); for "random" a random structure. The
/// model is left as it was. This is S3PET's plan hook (PeftModel::add_adapter with batches).
std::shared_ptr<S3petConfig> s3pet_find_structure(PeftModel& model, const S3petConfig& config,
                                                  const data::BatchSource& batches);

/// The keep probabilities p_i of a searching adapter (deterministic, as in eval mode).
std::vector<double> s3pet_probabilities(PeftModel& model, const std::string& adapter);

Method s3pet_method();

}  // namespace peft::methods
