#include "s3pet_modules.h"

#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/nn/per_sample.h"

namespace peft::methods {
namespace {
constexpr const char* kC = "s3pet";

struct NormDeltaImpl : torch::nn::Module {
  NormDeltaImpl(const NormSlot& slot) {
    weight = register_parameter("weight", torch::zeros_like(slot.weight));
    if (slot.bias_member) bias = register_parameter("bias", torch::zeros_like(slot.bias));
  }
  at::Tensor weight, bias;
};
}  // namespace

at::Tensor GateBank::gate(int64_t index) const {
  PEFT_CHECK(z.defined(), kC, "the search gates were not sampled: run the model through its PeftModel");
  return z[index];
}

// ---- gated deltas ------------------------------------------------------------

S3petLinearDelta::S3petLinearDelta(int64_t in, int64_t out, bool layer_has_bias, std::shared_ptr<GateBank> bank,
                                   at::TensorOptions options)
    : in_(in), out_(out), layer_has_bias_(layer_has_bias), bank_(std::move(bank)), options_(options.requires_grad(false)) {}

void S3petLinearDelta::add_lora(int64_t rank, double alpha, int64_t gate) {
  lora_A = register_parameter("lora_A", torch::empty({rank, in_}, options_));
  // kaiming_uniform(a=sqrt(5)) as LoRA's A; B = 0, so the delta starts at zero.
  torch::NoGradGuard g;
  torch::nn::init::kaiming_uniform_(lora_A, std::sqrt(5.0));
  lora_B = register_parameter("lora_B", torch::zeros({out_, rank}, options_));
  scale_ = alpha / static_cast<double>(rank);
  lora_gate_ = gate;
}

void S3petLinearDelta::add_bias(int64_t gate) {
  bias_delta = register_parameter("bias_delta", torch::zeros({out_}, options_));
  bias_gate_ = gate;
}

at::Tensor S3petLinearDelta::adapt_output(const at::Tensor& x, const at::Tensor& y) {
  // Computed in the delta's dtype (float32 beside a half-precision base), added in the base's.
  at::Tensor out = y;
  if (lora_A.defined()) {
    at::Tensor d = nn::recorded_linear(nn::recorded_linear(x.to(lora_A.scalar_type()), lora_A), lora_B) * scale_;
    out = out + (bank_ && lora_gate_ >= 0 ? d * bank_->gate(lora_gate_) : d).to(y.scalar_type());
  }
  if (bias_delta.defined() && bank_ && bias_gate_ >= 0) return out + (bias_delta * bank_->gate(bias_gate_)).to(y.scalar_type());
  if (bias_delta.defined()) return nn::recorded_add_bias(out, bias_delta);
  return out;
}

bool S3petLinearDelta::mergeable() const { return !bank_ && (!bias_delta.defined() || layer_has_bias_); }

void S3petLinearDelta::merge_into(at::Tensor& weight_out_in, at::Tensor& bias) {
  if (lora_A.defined()) weight_out_in.add_(torch::matmul(lora_B, lora_A).to(weight_out_in.scalar_type()) * scale_);
  if (bias_delta.defined()) bias.add_(bias_delta.to(bias.scalar_type()));
}

void S3petLinearDelta::unmerge_from(at::Tensor& weight_out_in, at::Tensor& bias) {
  if (lora_A.defined()) weight_out_in.sub_(torch::matmul(lora_B, lora_A).to(weight_out_in.scalar_type()) * scale_);
  if (bias_delta.defined()) bias.sub_(bias_delta.to(bias.scalar_type()));
}

S3petAdapter::S3petAdapter(int64_t hidden, int64_t size, std::shared_ptr<GateBank> bank, int64_t gate,
                           at::TensorOptions options)
    : bank_(std::move(bank)), gate_(gate) {
  down = register_module("down", torch::nn::Linear(hidden, size));
  up = register_module("up", torch::nn::Linear(size, hidden));
  torch::NoGradGuard g;
  up->weight.zero_();
  up->bias.zero_();
  to(options.device(), options.dtype().toScalarType());
}

at::Tensor S3petAdapter::forward(const at::Tensor&, const at::Tensor& output) {
  at::Tensor d = nn::recorded_linear(torch::relu(nn::recorded_linear(output.to(down->weight.scalar_type()), down->weight, down->bias)),
                                     up->weight, up->bias);
  return output + (bank_ && gate_ >= 0 ? d * bank_->gate(gate_) : d).to(output.scalar_type());
}

// ---- controller --------------------------------------------------------------

double solve_shift(const at::Tensor& alpha, const at::Tensor& counts, double budget, double beta) {
  const at::Tensor a = alpha.detach().to(torch::kCPU, torch::kDouble), n = counts.to(torch::kDouble);
  auto total = [&](double b) { return (torch::sigmoid((a - b) / beta) * n).sum().item<double>(); };
  double lo = a.min().item<double>() - 60 * beta, hi = a.max().item<double>() + 60 * beta;
  if (total(lo) <= budget) return lo;  // everything fits: no constraint
  for (int i = 0; i < 200 && hi - lo > 1e-14 * std::max(1.0, std::abs(lo)); ++i) {
    const double mid = 0.5 * (lo + hi);
    (total(mid) > budget ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

S3petController::S3petController(std::vector<S3petCandidate> candidates, std::vector<NormSlot> norms,
                                 const S3petConfig& config, int64_t budget, std::shared_ptr<GateBank> bank,
                                 at::TensorOptions options)
    : nn::SideNetwork("S3petController"),
      candidates_(std::move(candidates)),
      norms_(std::move(norms)),
      budget_(static_cast<double>(budget)),
      beta_(config.beta),
      implicit_(config.shift_gradient == "implicit"),
      bank_(std::move(bank)) {
  const auto n = static_cast<int64_t>(candidates_.size());
  arch_logits = register_parameter("arch_logits", torch::zeros({n}, options.requires_grad(false)));
  counts_ = torch::empty({n}, torch::kDouble);
  for (int64_t i = 0; i < n; ++i) counts_[i] = static_cast<double>(candidates_[i].params);
  norm_deltas = register_module("norm_deltas", torch::nn::ModuleList());
  for (const auto& slot : norms_) norm_deltas->push_back(std::make_shared<NormDeltaImpl>(slot));
}

S3petController::~S3petController() { restore_norms(); }

at::Tensor S3petController::probabilities() {
  const double b = solve_shift(arch_logits, counts_, budget_, beta_);
  const at::Tensor a = arch_logits;
  const bool constrained = (counts_.sum().item<double>() > budget_);
  if (implicit_ && constrained) {
    // b(α) moves so that Σ p n stays B: db/dα_i = σ'_i n_i / Σ_j σ'_j n_j. The shift below has b's
    // value and that gradient.
    at::Tensor w;
    {
      torch::NoGradGuard g;
      at::Tensor s = torch::sigmoid((a.detach().to(torch::kDouble) - b) / beta_);
      w = s * (1 - s) * counts_.to(s.device());
      w = (w / w.sum()).to(a.scalar_type());
    }
    at::Tensor shift = b + (w * (a - a.detach())).sum();
    return torch::sigmoid((a - shift) / beta_);
  }
  at::Tensor p = torch::sigmoid((a - b) / beta_);
  if (!constrained) return p;
  at::Tensor sum = p.sum();
  return p / sum * sum.detach();  // S3Delta's shift_detach: the total stays as solved
}

void S3petController::restore_norms() {
  for (auto& slot : norms_) {
    *slot.weight_member = slot.weight;
    if (slot.bias_member) *slot.bias_member = slot.bias;
  }
}

models::ModelInputs S3petController::prepare(const models::ModelInputs& inputs) {
  restore_norms();
  at::Tensor p = probabilities().clamp(1e-6, 1 - 1e-6);
  at::Tensor z = p;
  if (is_training()) {
    // Hard-concrete (Gumbel-sigmoid) sample with l = 0, r = 1: z = σ(log u − log(1−u) + log p − log(1−p)).
    at::Tensor u = torch::rand_like(p).clamp(1e-6, 1 - 1e-6);
    z = torch::sigmoid(torch::log(u) - torch::log1p(-u) + torch::log(p) - torch::log1p(-p));
  }
  bank_->z = z;
  for (size_t i = 0; i < norms_.size(); ++i) {
    auto& slot = norms_[i];
    auto delta = norm_deltas->ptr<NormDeltaImpl>(i);
    *slot.weight_member = (slot.weight + z[slot.gate] * delta->weight).to(slot.weight.scalar_type());
    if (slot.bias_member) *slot.bias_member = (slot.bias + z[slot.gate] * delta->bias).to(slot.bias.scalar_type());
  }
  models::ModelInputs out = inputs;
  auto previous = inputs.final_hidden_hook;
  // The norms' originals return once the blocks are done (every searched norm sits before the head).
  out.final_hidden_hook = [this, previous](const at::Tensor& h) {
    restore_norms();
    return previous ? previous(h) : h;
  };
  return out;
}

}  // namespace peft::methods
