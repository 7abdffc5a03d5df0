#include "peft/privacy/per_sample_gradients.h"

#include <cmath>
#include <unordered_map>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/nn/per_sample.h"

namespace peft::privacy {

using nn::PerSampleRule;
using nn::PerSampleUse;

struct PerSampleBatch::Tensor {
  at::Tensor param;
  c10::ScalarType dtype;                            // what its per-sample gradients are computed in
  std::vector<std::shared_ptr<PerSampleUse>> uses;  // those that got an output gradient
  bool ghost = false;                               // norm by the ghost identity (one linear use)
  at::Tensor materialized;                          // [batch, shape]: kept for rules other than linear
};

namespace {

bool is_linear(PerSampleRule r) { return r == PerSampleRule::kLinear || r == PerSampleRule::kLinearInOut; }
bool is_half(const at::Tensor& t) { return t.defined() && c10::elementSize(t.scalar_type()) < 4; }

/// [batch, positions, features] in `dtype`.
at::Tensor per_row(const at::Tensor& t, int64_t batch, c10::ScalarType dtype) {
  return t.reshape({batch, -1, t.size(-1)}).to(dtype);
}

/// Shape check of a use against its tensor: "" or what is wrong.
std::string shape_problem(const PerSampleUse& u) {
  const int64_t n = u.param.numel();
  const int64_t gf = u.grad_output.size(-1);
  switch (u.rule) {
    case PerSampleRule::kLinear:
      if (u.param.dim() == 2 && u.param.size(0) == gf && u.param.size(1) == u.input.size(-1)) return "";
      break;
    case PerSampleRule::kLinearInOut:
      if (u.param.dim() == 2 && u.param.size(1) == gf && u.param.size(0) == u.input.size(-1)) return "";
      break;
    case PerSampleRule::kScale:
      if (u.input.sizes() == u.grad_output.sizes() && u.input.size(-1) == n) return "";
      break;
    case PerSampleRule::kBias:
      if (gf == n) return "";
      break;
    case PerSampleRule::kSparse:
      if (u.indices.numel() == n && u.input.size(-1) == u.in_features) return "";
      break;
  }
  return fmt::format("a recorded op's shapes (tensor {}, input {}, output gradient {}) do not fit its rule",
                     c10::str(u.param.sizes()), u.input.defined() ? c10::str(u.input.sizes()) : "-",
                     c10::str(u.grad_output.sizes()));
}

/// One use's per-sample gradients [batch, param shape].
at::Tensor use_gradient(const PerSampleUse& u, int64_t batch, c10::ScalarType dtype) {
  const at::Tensor g = per_row(u.grad_output, batch, dtype);
  at::Tensor out;
  switch (u.rule) {
    case PerSampleRule::kLinear: out = torch::bmm(g.transpose(1, 2), per_row(u.input, batch, dtype)); break;
    case PerSampleRule::kLinearInOut: out = torch::bmm(per_row(u.input, batch, dtype).transpose(1, 2), g); break;
    case PerSampleRule::kScale: out = (g * per_row(u.input, batch, dtype)).sum(1); break;
    case PerSampleRule::kBias: out = g.sum(1); break;
    case PerSampleRule::kSparse: {
      const at::Tensor rows = torch::div(u.indices, u.in_features, "floor");
      const at::Tensor cols = torch::remainder(u.indices, u.in_features);
      out = (g.index_select(2, rows) * per_row(u.input, batch, dtype).index_select(2, cols)).sum(1);
      break;
    }
  }
  std::vector<int64_t> shape = {batch};
  for (int64_t s : u.param.sizes()) shape.push_back(s);
  return out.reshape(shape);
}

/// ‖example i's gradient‖² of a linear use, without forming it: Σ_{t,s} (x_t·x_s)(g_t·g_s).
at::Tensor ghost_norm_sq(const PerSampleUse& u, int64_t batch, c10::ScalarType dtype) {
  const at::Tensor x = per_row(u.input, batch, dtype), g = per_row(u.grad_output, batch, dtype);
  return (torch::bmm(x, x.transpose(1, 2)) * torch::bmm(g, g.transpose(1, 2))).sum({1, 2});
}

/// Σ_i factors[i] · (a linear use's gradient of example i), by one matrix product.
at::Tensor weighted_linear(const PerSampleUse& u, const at::Tensor& factors, int64_t batch, c10::ScalarType dtype) {
  const at::Tensor x = per_row(u.input, batch, dtype);
  const at::Tensor g = per_row(u.grad_output, batch, dtype) * factors.to(dtype).view({batch, 1, 1});
  const at::Tensor xf = x.reshape({-1, x.size(-1)}), gf = g.reshape({-1, g.size(-1)});
  return u.rule == PerSampleRule::kLinear ? torch::mm(gf.t(), xf) : torch::mm(xf.t(), gf);
}

bool ghost_is_cheaper(const PerSampleUse& u, int64_t batch) {
  const int64_t in = u.input.size(-1), out = u.grad_output.size(-1);
  const int64_t positions = u.input.numel() / (batch * in);
  return positions * (in + out) < in * out;
}

}  // namespace

PerSampleBatch::~PerSampleBatch() = default;

PerSampleBatch::PerSampleBatch(const std::function<models::ModelOutput(const models::ModelInputs&)>& forward,
                               const models::ModelInputs& batch, const std::vector<at::Tensor>& params,
                               PerSampleNorms norms, const std::vector<std::string>& names) {
  PEFT_CHECK(batch.labels.defined(), "privacy", "per-sample gradients need labels in the batch");
  batch_size_ = batch.labels.size(0);
  const int64_t b = batch_size_;
  auto name_of = [&](size_t k) { return k < names.size() ? "'" + names[k] + "'" : fmt::format("tensor {}", k); };
  for (const auto& p : params)
    if (p.grad().defined()) p.mutable_grad().reset();

  models::ModelInputs inputs = batch;
  inputs.per_example_loss = true;
  std::vector<std::shared_ptr<PerSampleUse>> uses;
  {
    nn::PerSampleRecorder recorder(b);  // alive through backward: checkpointed blocks record when recomputed
    auto out = forward(inputs);
    PEFT_CHECK(out.loss.defined(), "privacy", "the model returned no loss (does the batch carry labels?)");
    if (out.loss.dim() != 1 || out.loss.size(0) != b) {
      why_ = fmt::format("the model's loss has shape {}, not one value for each of the {} examples", c10::str(out.loss.sizes()), b);
      return;
    }
    losses_ = out.loss.detach().to(torch::kFloat64);
    if (!torch::isfinite(losses_).all().item<bool>()) {
      finite_ = false;
      why_ = "a non-finite loss";
      return;
    }
    (is_half(out.loss) ? out.loss.to(torch::kFloat) : out.loss).sum().backward();
    if (!recorder.problem().empty()) {
      why_ = recorder.problem();
      return;
    }
    uses = recorder.uses();
  }

  torch::NoGradGuard no_grad;
  std::unordered_map<const void*, size_t> index;
  tensors_.resize(params.size());
  for (size_t k = 0; k < params.size(); ++k) {
    tensors_[k].param = params[k];
    const auto t = params[k].scalar_type();
    tensors_[k].dtype = t == torch::kFloat64 ? t : torch::kFloat;
    index[params[k].unsafeGetTensorImpl()] = k;
  }
  for (auto& u : uses) {
    if (!u->grad_output.defined()) continue;  // not on the path to the loss (or recomputed elsewhere)
    auto it = index.find(u->param.unsafeGetTensorImpl());
    if (it == index.end()) continue;  // recorded, but not among the tensors asked for
    const std::string problem = shape_problem(*u);
    if (!problem.empty()) {
      why_ = name_of(it->second) + ": " + problem;
      return;
    }
    tensors_[it->second].uses.push_back(u);
  }

  std::vector<at::Tensor> norm_sq(tensors_.size());  // per tensor, [batch] float64
  std::vector<bool> half(tensors_.size(), false);
  for (size_t k = 0; k < tensors_.size(); ++k) {
    auto& t = tensors_[k];
    if (t.uses.empty()) {
      if (t.param.grad().defined()) {
        why_ = fmt::format("{} has no per-sample rule (it is not trained through a linear, scale or bias op that records)",
                           name_of(k));
        return;
      }
      continue;
    }
    bool all_linear = true;
    for (const auto& u : t.uses) {
      all_linear = all_linear && is_linear(u->rule);
      half[k] = half[k] || is_half(u->grad_output) || is_half(u->input);
    }
    t.ghost = all_linear && t.uses.size() == 1 &&
              (norms == PerSampleNorms::kGhost || (norms == PerSampleNorms::kAuto && ghost_is_cheaper(*t.uses[0], b)));
    if (t.ghost) {
      norm_sq[k] = ghost_norm_sq(*t.uses[0], b, t.dtype);
    } else {
      at::Tensor g = gradient(k);
      norm_sq[k] = g.reshape({b, -1}).pow(2).sum(1);
      if (!all_linear) t.materialized = g;
    }
    norm_sq[k] = norm_sq[k].to(torch::kFloat64).cpu();
  }
  norms_ = torch::zeros({b}, torch::kFloat64);
  for (const auto& n : norm_sq)
    if (n.defined()) norms_ += n;
  norms_ = norms_.sqrt();
  // The check that every use was recorded: each tensor's per-sample gradients sum to backward's
  // gradient, within rounding of its own scale — or of the whole gradient's, for a tensor whose
  // gradient is all rounding (a key bias under softmax) and could not move a clipping factor.
  const double whole = norms_.sum().item<double>();
  for (size_t k = 0; k < tensors_.size(); ++k) {
    const auto& t = tensors_[k];
    if (t.uses.empty()) continue;
    std::vector<at::Tensor> all(tensors_.size());
    all[k] = torch::zeros_like(t.param, t.param.options().dtype(t.dtype));
    add_weighted(all, torch::ones({b}, torch::kFloat64));
    const at::Tensor grad = t.param.grad();
    const double err = (grad.defined() ? all[k] - grad.to(t.dtype) : all[k]).norm().item<double>();
    const double rel = t.dtype == torch::kFloat64 && !half[k] ? 1e-9 : (half[k] ? 5e-2 : 1e-3);
    const double tolerance = rel * std::max(norm_sq[k].sqrt().sum().item<double>(), 1e-4 * whole);
    if (!(err <= tolerance)) {
      why_ = fmt::format("{}: the per-sample gradients sum to {:.3g} away from backward's gradient (tolerance {:.3g}); "
                         "the tensor is used by an op that does not record",
                         name_of(k), err, tolerance);
      return;
    }
  }
}

void PerSampleBatch::add_weighted(std::vector<at::Tensor>& sums, const at::Tensor& factors) const {
  PEFT_CHECK(ok(), "privacy", "per-sample gradients unavailable: {}", why_);
  PEFT_CHECK(sums.size() == tensors_.size(), "privacy", "add_weighted: {} sums for {} tensors", sums.size(), tensors_.size());
  torch::NoGradGuard no_grad;
  const int64_t b = batch_size_;
  for (size_t k = 0; k < tensors_.size(); ++k) {
    const auto& t = tensors_[k];
    if (!sums[k].defined() || t.uses.empty()) continue;
    const at::Tensor f = factors.to(t.param.device(), t.dtype);
    if (t.materialized.defined()) {
      sums[k].add_(at::tensordot(f, t.materialized, {0}, {0}).to(sums[k].scalar_type()));
      continue;
    }
    for (const auto& u : t.uses) sums[k].add_(weighted_linear(*u, f, b, t.dtype).to(sums[k].scalar_type()));
  }
}

at::Tensor PerSampleBatch::gradient(size_t k) const {
  PEFT_CHECK(k < tensors_.size(), "privacy", "gradient: no tensor {} (of {})", k, tensors_.size());
  const auto& t = tensors_[k];
  torch::NoGradGuard no_grad;
  if (t.materialized.defined()) return t.materialized;
  std::vector<int64_t> shape = {batch_size_};
  for (int64_t s : t.param.sizes()) shape.push_back(s);
  at::Tensor g = torch::zeros(shape, t.param.options().dtype(t.dtype));
  for (const auto& u : t.uses) g.add_(use_gradient(*u, batch_size_, t.dtype));
  return g;
}

}  // namespace peft::privacy
