#include "peft/generate.h"

#include <algorithm>
#include <limits>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/nn/prompt_encoder.h"
#include "peft/peft_model.h"

namespace peft {
namespace {
constexpr const char* kC = "generate";

/// The next token from the last position's logits.
int64_t pick(const at::Tensor& logits, const GenerationConfig& c) {
  if (c.temperature <= 0.0) return logits.argmax().item<int64_t>();
  at::Tensor scores = logits.to(torch::kFloat) / c.temperature;
  if (c.top_k > 0 && c.top_k < scores.size(-1)) {
    const at::Tensor kth = std::get<0>(scores.topk(c.top_k)).min();
    scores = scores.masked_fill(scores < kth, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = torch::softmax(scores, -1);
  if (c.top_p < 1.0) {
    auto [sorted, order] = probs.sort(-1, /*descending=*/true);
    at::Tensor cumulative = sorted.cumsum(-1);
    // Keep the smallest prefix whose mass reaches top_p (always at least one token).
    at::Tensor drop = (cumulative - sorted) >= c.top_p;
    sorted.masked_fill_(drop, 0.0);
    probs = torch::zeros_like(probs).scatter_(-1, order, sorted);
  }
  return torch::multinomial(probs, 1).item<int64_t>();
}

/// Positions the tokens may take: the model's maximum less the active adapter's virtual tokens.
int64_t context_window(PeftModel& model) {
  int64_t positions = model.base_model().geometry().max_positions;
  PEFT_CHECK(positions > 0, kC, "{} has no maximum sequence length to generate within", model.base_model().architecture());
  if (model.adapters_enabled() && !model.active_adapter().empty())
    if (auto encoder = model.prompt_encoder(model.active_adapter())) positions -= encoder->num_virtual_tokens();
  PEFT_CHECK(positions > 0, kC, "the adapter's virtual tokens fill the model's {} positions",
             model.base_model().geometry().max_positions);
  return positions;
}
}  // namespace

void GenerationConfig::validate() const {
  PEFT_CHECK(max_new_tokens >= 0, kC, "max_new_tokens must be >= 0, found {}", max_new_tokens);
  PEFT_CHECK(temperature >= 0.0, kC, "temperature must be >= 0, found {}", temperature);
  PEFT_CHECK(top_k >= 0, kC, "top_k must be >= 0, found {}", top_k);
  PEFT_CHECK(top_p > 0.0 && top_p <= 1.0, kC, "top_p must be in (0, 1], found {}", top_p);
}

GenerationResult generate(PeftModel& model, const std::vector<int64_t>& prompt, const GenerationConfig& config) {
  config.validate();
  PEFT_CHECK(!prompt.empty(), kC, "the prompt has no tokens");
  const int64_t positions = context_window(model);
  const bool was_training = model.base_model().is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  const c10::Device device = model.base_model().parameters().front().device();
  std::vector<int64_t> ids = prompt;
  GenerationResult result;
  result.stop_reason = "max_new_tokens";
  for (int64_t i = 0; i < config.max_new_tokens; ++i) {
    const auto n = std::min<int64_t>(static_cast<int64_t>(ids.size()), positions);
    std::vector<int64_t> window(ids.end() - n, ids.end());
    models::ModelInputs in;
    in.input_ids = torch::tensor(window, torch::kLong).unsqueeze(0).to(device);
    at::Tensor logits = model.forward(in).logits;
    PEFT_CHECK(logits.defined() && logits.dim() == 3, kC, "{} returns no per-token logits: generation needs a causal LM",
               model.base_model().architecture());
    const int64_t next = pick(logits[0][-1], config);
    if (std::find(config.stop_tokens.begin(), config.stop_tokens.end(), next) != config.stop_tokens.end()) {
      result.stop_reason = "stop_token";
      break;
    }
    ids.push_back(next);
    result.tokens.push_back(next);
  }
  model.train(was_training);
  return result;
}

}  // namespace peft
