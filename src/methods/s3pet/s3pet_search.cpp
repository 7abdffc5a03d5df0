// S3PET's bi-level search and the structures it (or a random draw) produces.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/log.h"
#include "peft/data/batch_source.h"
#include "peft/methods/s3pet/s3pet.h"
#include "peft/peft_model.h"
#include "peft/optim/adamw.h"
#include "s3pet_modules.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "s3pet";

S3petController& controller(PeftModel& model, const std::string& adapter) {
  auto c = std::dynamic_pointer_cast<S3petController>(model.side_network(adapter));
  PEFT_CHECK(c != nullptr, kC, "adapter '{}' is not a searching S3PET adapter (its config has a structure)", adapter);
  return *c;
}

std::shared_ptr<S3petConfig> with_structure(const S3petConfig& config, std::vector<S3petCandidate> structure) {
  auto out = std::dynamic_pointer_cast<S3petConfig>(config.clone());
  out->structure = std::move(structure);
  return out;
}

using Named = std::vector<std::pair<std::string, at::Tensor>>;

std::vector<at::Tensor> tensors(const Named& named) {
  std::vector<at::Tensor> out;
  for (const auto& [n, t] : named) out.push_back(t);
  return out;
}

/// DARTS's second-order α gradient (Liu et al. 2019, eq. 7–8): the validation loss after one
/// virtual SGD step of the weights, with the Hessian-vector product by central differences.
/// Gates are deterministic (eval mode) throughout, so that the differences are of one function.
/// Returns the gradient and the validation loss after the virtual step.
std::pair<at::Tensor, double> unrolled_alpha_gradient(PeftModel& model, const Named& weights, at::Tensor& alpha,
                                                      const models::ModelInputs& train_b, const models::ModelInputs& val_b,
                                                      double xi) {
  const bool was_training = model.base_model().is_training();
  model.eval();
  auto w = tensors(weights);
  double last_loss = 0;
  auto grad_of = [&](const models::ModelInputs& b, const std::vector<at::Tensor>& wrt) {
    auto loss = model.forward(b).loss;
    last_loss = loss.item<double>();
    return torch::autograd::grad({loss}, wrt, {}, false, false, /*allow_unused=*/true);
  };
  auto shift = [&](const std::vector<at::Tensor>& dir, double step) {
    torch::NoGradGuard g;
    for (size_t i = 0; i < w.size(); ++i)
      if (dir[i].defined()) w[i].add_(dir[i], step);
  };
  const auto g_train = grad_of(train_b, w);
  shift(g_train, -xi);  // w' = w − ξ ∇w L_train
  std::vector<at::Tensor> wrt = {alpha};
  wrt.insert(wrt.end(), w.begin(), w.end());
  auto g_val = grad_of(val_b, wrt);
  const double val_loss = last_loss;
  shift(g_train, xi);  // back to w
  at::Tensor d_alpha = g_val[0].defined() ? g_val[0] : torch::zeros_like(alpha);
  std::vector<at::Tensor> v(g_val.begin() + 1, g_val.end());
  double norm2 = 0;
  for (const auto& t : v)
    if (t.defined()) norm2 += t.pow(2).sum().item<double>();
  if (norm2 > 0) {
    const double eps = 0.01 / std::sqrt(norm2);
    shift(v, eps);
    auto plus = grad_of(train_b, {alpha})[0];
    shift(v, -2 * eps);
    auto minus = grad_of(train_b, {alpha})[0];
    shift(v, eps);
    if (plus.defined() && minus.defined()) d_alpha = d_alpha - xi * (plus - minus) / (2 * eps);
  }
  model.train(was_training);
  return {d_alpha.detach(), val_loss};
}

}  // namespace

std::vector<double> s3pet_probabilities(PeftModel& model, const std::string& adapter) {
  torch::NoGradGuard g;
  at::Tensor p = controller(model, adapter).probabilities().to(torch::kCPU, torch::kDouble);
  return std::vector<double>(p.data_ptr<double>(), p.data_ptr<double>() + p.numel());
}

S3petSearchResult s3pet_search(PeftModel& model, const std::string& adapter,
                               const std::function<models::ModelInputs()>& train_batch,
                               const std::function<models::ModelInputs()>& validation_batch) {
  auto& ctrl = controller(model, adapter);
  const auto& cfg = dynamic_cast<const S3petConfig&>(model.adapter_config(adapter));
  const auto& s = cfg.search;
  PEFT_CHECK(model.active_adapter() == adapter && model.adapters_enabled(), kC,
             "adapter '{}' must be active and enabled to be searched", adapter);
  Named weights, alpha;
  for (auto& p : model.base_model().named_parameters())
    if (p.value().requires_grad()) (p.value().is_same(ctrl.arch_logits) ? alpha : weights).emplace_back(p.key(), p.value());
  PEFT_CHECK(alpha.size() == 1, kC, "adapter '{}' is frozen; a search trains it", adapter);
  optim::AdamW w_opt(weights, {s.lr, 0.9, 0.999, 1e-8, 0.0});
  optim::AdamW a_opt(alpha, {s.alpha_lr, 0.9, 0.999, 1e-8, 0.0});

  S3petSearchResult result;
  const bool was_training = model.base_model().is_training();
  model.train();
  for (int64_t step = 0; step < s.steps; ++step) {
    const auto tb = train_batch();
    w_opt.zero_grad();
    a_opt.zero_grad();
    auto loss = model.forward(tb).loss;
    loss.backward();
    w_opt.step(s.lr);  // the weights' step only; α's gradient of the training loss is dropped
    result.train_losses.push_back(loss.item<double>());

    const auto vb = validation_batch();
    w_opt.zero_grad();
    a_opt.zero_grad();
    if (s.second_order) {
      auto [grad, val_loss] = unrolled_alpha_gradient(model, weights, alpha.front().second, tb, vb, s.lr);
      alpha.front().second.mutable_grad() = grad;
      result.validation_losses.push_back(val_loss);
    } else {
      auto vloss = model.forward(vb).loss;
      vloss.backward();
      result.validation_losses.push_back(vloss.item<double>());
    }
    for (auto& [n, t] : weights) t.mutable_grad() = at::Tensor();
    a_opt.step(s.alpha_lr);
    if (s.log_every > 0 && (step + 1) % s.log_every == 0)
      log::info("s3pet search step {}/{}: train loss {:.4f}, validation loss {:.4f}", step + 1, s.steps,
                result.train_losses.back(), result.validation_losses.back());
  }
  model.train(was_training);

  const auto p = s3pet_probabilities(model, adapter);
  const auto& cands = ctrl.candidates();
  std::vector<size_t> order(cands.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  std::vector<S3petCandidate> ranked;
  for (size_t i : order) {
    result.ranking.emplace_back(cands[i], p[i]);
    ranked.push_back(cands[i]);
  }
  result.structure = with_structure(cfg, s3pet_fit_budget(ranked, s3pet_budget(model, cfg)));
  return result;
}

std::shared_ptr<S3petConfig> s3pet_random_structure(PeftModel& model, const S3petConfig& config) {
  const auto cands = s3pet_candidates(model, config);
  std::vector<S3petCandidate> shuffled;
  for (int64_t i : data::permutation(static_cast<int64_t>(cands.size()), config.search.seed))
    shuffled.push_back(cands[static_cast<size_t>(i)]);
  return with_structure(config, s3pet_fit_budget(shuffled, s3pet_budget(model, config)));
}

std::shared_ptr<S3petConfig> s3pet_find_structure(PeftModel& model, const S3petConfig& cfg,
                                                  const data::BatchSource& batches) {
  std::shared_ptr<S3petConfig> found;
  if (cfg.search.strategy == "random") {
    found = s3pet_random_structure(model, cfg);
  } else {
    // α learns on examples the weights never see (S3Delta's bi-level split of the training data).
    auto [train_batches, held_batches] = batches.split(cfg.search.validation_fraction, cfg.search.seed);
    const std::string search = "s3pet-search";
    model.add_adapter(search, cfg);
    const std::string active = model.active_adapter();
    auto restore = [&] {  // the model as it was: no search adapter, the same one active
      model.delete_adapter(search);
      if (!active.empty() && active != search) model.set_adapter(active);
    };
    model.set_adapter(search);
    S3petSearchResult result;
    try {
      result = s3pet_search(model, search, train_batches, held_batches);
    } catch (...) {
      restore();
      throw;
    }
    restore();
    for (size_t i = 0; i < std::min<size_t>(10, result.ranking.size()); ++i) {
      const auto& [c, p] = result.ranking[i];
      log::info("s3pet: p = {:.3f}  {} {}{} ({} params)", p, c.kind, c.module, c.slot.empty() ? "" : " " + c.slot,
                c.params);
    }
    found = result.structure;
  }
  int64_t used = 0;
  for (const auto& c : found->structure) used += c.params;
  log::info("s3pet {} structure: {} modules, {} of {} budgeted parameters", cfg.search.strategy, found->structure.size(),
            used, s3pet_budget(model, cfg));
  return found;
}

}  // namespace peft::methods
