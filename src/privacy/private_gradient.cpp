#include "peft/privacy/private_gradient.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/data/batch_source.h"

namespace peft::privacy {
namespace {

using Forward = std::function<models::ModelOutput(const models::ModelInputs&)>;

int64_t tokens_of(const models::ModelInputs& batch) {
  if (batch.attention_mask.defined()) return batch.attention_mask.sum().item<int64_t>();
  if (batch.input_ids.defined()) return batch.input_ids.numel();
  return batch.labels.size(0);
}

double clip_factor(double norm, double clip_norm) { return std::min(1.0, clip_norm / (norm + 1e-6)); }  // Opacus's

/// Adds example i's clipped gradient to `sums`, by its own forward and backward.
void add_by_loop(const Forward& forward, const data::Dataset& dataset, int64_t i, const std::vector<at::Tensor>& params,
                 double clip_norm, c10::Device device, std::vector<at::Tensor>& sums, PrivateGradient& r) {
  for (const auto& p : params)
    if (p.grad().defined()) p.mutable_grad().reset();
  auto batch = data::to_device(dataset.batch({i}), device);
  r.tokens += tokens_of(batch);
  auto out = forward(batch);
  PEFT_CHECK(out.loss.defined(), "privacy", "the model returned no loss (does the batch carry labels?)");
  const double value = out.loss.item<double>();
  PEFT_CHECK(std::isfinite(value), "privacy", "example {}: non-finite loss {} (lower the learning rate)", i, value);
  out.loss.to(torch::kFloat).backward();
  torch::NoGradGuard no_grad;
  double norm_sq = 0;
  for (const auto& p : params)
    if (p.grad().defined()) norm_sq += p.grad().to(torch::kFloat64).pow(2).sum().item<double>();
  const double norm = std::sqrt(norm_sq);
  if (norm > clip_norm) ++r.clipped;
  for (size_t k = 0; k < params.size(); ++k)
    if (params[k].grad().defined()) sums[k].add_(params[k].grad(), clip_factor(norm, clip_norm));
  r.loss_sum += value;
  r.norms.push_back(norm);
  ++r.examples;
}

/// Adds the chunk's clipped gradients to `sums` from one batched pass; false (with r.fallback set)
/// when some tensor has no per-sample rule.
bool add_batched(const Forward& forward, const data::Dataset& dataset, const std::vector<int64_t>& chunk,
                 const std::vector<at::Tensor>& params, const PrivateGradientOptions& o, c10::Device device,
                 std::vector<at::Tensor>& sums, PrivateGradient& r) {
  auto batch = data::to_device(dataset.batch(chunk), device);
  PerSampleBatch ps(forward, batch, params, o.norms, o.names);
  if (!ps.finite()) {
    const auto bad = torch::nonzero(~torch::isfinite(ps.losses())).flatten()[0].item<int64_t>();
    fail("privacy", fmt::format("example {}: non-finite loss {} (lower the learning rate)", chunk[static_cast<size_t>(bad)],
                                ps.losses()[bad].item<double>()));
  }
  if (!ps.ok()) {
    r.fallback = ps.why();
    return false;
  }
  const at::Tensor norms = ps.norms();
  const at::Tensor factors = (o.clip_norm / (norms + 1e-6)).clamp_max(1.0);
  ps.add_weighted(sums, factors);
  r.clipped += (norms > o.clip_norm).sum().item<int64_t>();
  r.loss_sum += ps.losses().sum().item<double>();
  r.tokens += tokens_of(batch);
  r.examples += static_cast<int64_t>(chunk.size());
  const auto* n = norms.data_ptr<double>();
  r.norms.insert(r.norms.end(), n, n + norms.numel());
  return true;
}

}  // namespace

std::vector<int64_t> poisson_sample(int64_t n, double q, std::mt19937_64& rng) {
  std::bernoulli_distribution in(q);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i)
    if (in(rng)) out.push_back(i);
  return out;
}

PerSampleMethod per_sample_method_from_string(const std::string& s, const std::string& where) {
  if (s == "auto") return PerSampleMethod::kAuto;
  if (s == "vectorized") return PerSampleMethod::kVectorized;
  if (s == "loop") return PerSampleMethod::kLoop;
  fail("privacy", fmt::format("{}: per_sample_gradients must be \"auto\", \"vectorized\" or \"loop\", found \"{}\"", where, s));
}

std::string to_string(PerSampleMethod m) {
  switch (m) {
    case PerSampleMethod::kAuto: return "auto";
    case PerSampleMethod::kVectorized: return "vectorized";
    case PerSampleMethod::kLoop: return "loop";
  }
  return "?";
}

PrivateGradient private_gradient(const Forward& forward, const data::Dataset& dataset, const std::vector<int64_t>& indices,
                                 const std::vector<at::Tensor>& params, const PrivateGradientOptions& o,
                                 at::Generator& noise, c10::Device device) {
  PEFT_CHECK(o.clip_norm > 0 && std::isfinite(o.clip_norm), "privacy", "clip_norm must be > 0, found {}", o.clip_norm);
  PEFT_CHECK(o.expected_batch > 0, "privacy", "expected_batch must be > 0, found {}", o.expected_batch);
  PEFT_CHECK(o.max_physical_batch >= 0, "privacy", "max_physical_batch must be >= 0, found {}", o.max_physical_batch);
  PrivateGradient r;
  std::vector<at::Tensor> sums;
  for (const auto& p : params) sums.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
  bool batched = o.method != PerSampleMethod::kLoop;
  const size_t chunk_size = o.max_physical_batch > 0 ? static_cast<size_t>(o.max_physical_batch) : std::max<size_t>(indices.size(), 1);
  for (size_t start = 0; start < indices.size(); start += chunk_size) {
    const std::vector<int64_t> chunk(indices.begin() + static_cast<std::ptrdiff_t>(start),
                                     indices.begin() + static_cast<std::ptrdiff_t>(std::min(indices.size(), start + chunk_size)));
    if (batched && add_batched(forward, dataset, chunk, params, o, device, sums, r)) continue;
    PEFT_CHECK(o.method != PerSampleMethod::kVectorized, "privacy",
               "per_sample_gradients \"vectorized\": {} (use \"auto\" to fall back to a per-example loop)", r.fallback);
    batched = false;  // what one batch lacks, the next lacks too
    for (int64_t i : chunk) add_by_loop(forward, dataset, i, params, o.clip_norm, device, sums, r);
  }
  r.vectorized = batched;
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < params.size(); ++k) {
    at::Tensor g = sums[k];
    if (o.noise_multiplier > 0)
      g.add_(at::normal(0.0, o.noise_multiplier * o.clip_norm, g.sizes(), noise, g.options().device(torch::kCPU)).to(g.device()));
    g.div_(o.expected_batch);
    params[k].mutable_grad() = g;
  }
  return r;
}

}  // namespace peft::privacy
