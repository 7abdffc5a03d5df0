#include "peft/nn/per_sample.h"

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {
namespace {
thread_local PerSampleRecorder* g_recorder = nullptr;

const char* rule_name(PerSampleRule r) {
  switch (r) {
    case PerSampleRule::kLinear: return "linear";
    case PerSampleRule::kLinearInOut: return "linear";
    case PerSampleRule::kScale: return "scale";
    case PerSampleRule::kBias: return "bias";
    case PerSampleRule::kSparse: return "sparse";
  }
  return "?";
}
}  // namespace

PerSampleRecorder::PerSampleRecorder(int64_t batch_size) : batch_size_(batch_size), previous_(g_recorder) {
  PEFT_CHECK(previous_ == nullptr, "nn", "a per-sample recorder is already active on this thread");
  PEFT_CHECK(batch_size > 0, "nn", "per-sample recorder: batch size must be positive, found {}", batch_size);
  g_recorder = this;
}

PerSampleRecorder::~PerSampleRecorder() { g_recorder = previous_; }

bool per_sample_recording() { return g_recorder != nullptr; }

void record_per_sample(PerSampleRule rule, const at::Tensor& output, const at::Tensor& input, const at::Tensor& param,
                       const at::Tensor& indices, int64_t in_features) {
  PerSampleRecorder* r = g_recorder;
  if (!r || !param.defined() || !param.requires_grad() || !at::GradMode::is_enabled() || !output.requires_grad()) return;
  const int64_t b = r->batch_size();
  const bool batch_first = output.dim() >= 2 && output.size(0) == b &&
                           (rule == PerSampleRule::kBias || (input.dim() >= 2 && input.size(0) == b));
  if (!batch_first) {
    r->fail(fmt::format("a {} op on a tensor of shape {} (output {}) does not hold the batch of {} along dim 0",
                        rule_name(rule), c10::str(param.sizes()), c10::str(output.sizes()), b));
    return;
  }
  auto use = std::make_shared<PerSampleUse>();
  use->rule = rule;
  use->param = param;
  if (input.defined()) use->input = input.detach();
  use->indices = indices;
  use->in_features = in_features;
  // The hook keeps the use alive, not the recorder: a use whose output never gets a gradient stays empty.
  std::weak_ptr<PerSampleUse> weak = use;
  output.register_hook([weak](const at::Tensor& grad) {
    if (auto u = weak.lock()) u->grad_output = u->grad_output.defined() ? u->grad_output + grad : grad.detach();
  });
  r->add(std::move(use));
}

at::Tensor recorded_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  at::Tensor y = torch::nn::functional::linear(x, weight, bias);
  if (per_sample_recording()) {
    record_per_sample(PerSampleRule::kLinear, y, x, weight);
    record_per_sample(PerSampleRule::kBias, y, {}, bias);
  }
  return y;
}

at::Tensor recorded_scale(const at::Tensor& x, const at::Tensor& scale) {
  at::Tensor y = x * scale.flatten();
  if (per_sample_recording()) record_per_sample(PerSampleRule::kScale, y, x, scale);
  return y;
}

at::Tensor recorded_add_bias(const at::Tensor& x, const at::Tensor& bias) {
  at::Tensor y = x + bias.flatten().to(x.scalar_type());
  if (per_sample_recording()) record_per_sample(PerSampleRule::kBias, y, {}, bias);
  return y;
}

}  // namespace peft::nn
