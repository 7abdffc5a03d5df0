#include "peft/generate.h"

#include <algorithm>
#include <limits>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/nn/kv_cache.h"
#include "peft/nn/prompt_encoder.h"
#include "peft/nn/side_network.h"
#include "peft/peft_model.h"
#include "peft/tokenizers/tokenizer.h"
#include "encoder_decoder_generation.h"
#include "next_logits.h"

namespace peft {
namespace {
constexpr const char* kC = "generate";

/// One prompt's progress.
struct Row {
  std::vector<int64_t> ids;  ///< prompt + generated
  std::string adapter;       ///< the row's adapter_names entry ("": the active adapters)
  int64_t offset = 0;        ///< its adapter's virtual tokens: its tokens are numbered after them
  int64_t window = 0;        ///< the tokens its context may hold
  GenerationResult result;
  bool done = false;
};

}  // namespace

int64_t next_token(at::Tensor logits, const std::vector<int64_t>& seen, const GenerationConfig& c,
                   std::optional<at::Generator>& gen) {
  if (c.repetition_penalty != 1.0 && !seen.empty()) {
    const at::Tensor ids = torch::tensor(seen, torch::kLong);
    const at::Tensor s = logits.index_select(0, ids);
    logits = logits.index_copy(0, ids, torch::where(s < 0, s * c.repetition_penalty, s / c.repetition_penalty));
  }
  if (c.temperature <= 0.0) return logits.argmax().item<int64_t>();
  at::Tensor scores = logits / c.temperature;
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
  return (gen ? at::multinomial(probs, 1, false, *gen) : torch::multinomial(probs, 1)).item<int64_t>();
}

models::ModelOutput forward_rows(PeftModel& model, const models::ModelInputs& in, const std::vector<std::string>& names) {
  return names.empty() ? model.forward(in) : model.forward(in, names);
}

at::Tensor next_logits(const at::Tensor& logits, PeftModel& model) {
  PEFT_CHECK(logits.defined() && logits.dim() == 3, kC, "{} returns no per-token logits: generation needs a causal LM",
             model.base_model().architecture());
  return logits.select(1, -1).to(torch::kCPU, torch::kFloat);
}

bool record_token(GenerationResult& result, std::vector<int64_t>& ids, int64_t next, const at::Tensor& logits,
                  const GenerationConfig& c) {
  if (std::find(c.stop_tokens.begin(), c.stop_tokens.end(), next) != c.stop_tokens.end()) {
    result.stop_reason = "stop_token";
    return false;
  }
  ids.push_back(next);
  result.tokens.push_back(next);
  if (c.output_logits) result.logits.push_back(logits);
  if (static_cast<int64_t>(result.tokens.size()) >= c.max_new_tokens) {
    result.stop_reason = "max_new_tokens";
    return false;
  }
  return true;
}

namespace {

/// Records `next` for the row (or ends it); true while the row goes on.
bool advance(Row& row, int64_t next, const at::Tensor& logits, const GenerationConfig& c) {
  row.done = !record_token(row.result, row.ids, next, logits, c);
  return !row.done;
}

/// The virtual tokens of `adapter` ("": the active one): prompt or prefix tuning numbers the
/// tokens after them.
int64_t virtual_tokens(PeftModel& model, const std::string& adapter) {
  std::string name = adapter;
  if (name.empty()) {
    if (!model.adapters_enabled() || model.active_adapter().empty()) return 0;
    name = model.active_adapter();
  }
  if (name == PeftModel::kBaseAdapterName || !model.has_adapter(name)) return 0;
  auto encoder = model.prompt_encoder(name);
  return encoder ? encoder->num_virtual_tokens() : 0;
}

/// Positions the tokens may take: the model's maximum less the adapter's virtual tokens.
int64_t context_window(PeftModel& model, const std::string& adapter) {
  const int64_t positions = model.base_model().geometry().max_positions;
  PEFT_CHECK(positions > 0, kC, "{} has no maximum sequence length to generate within", model.base_model().architecture());
  const int64_t window = positions - virtual_tokens(model, adapter);
  PEFT_CHECK(window > 0, kC, "the adapter's virtual tokens fill the model's {} positions", positions);
  return window;
}

/// The adapter_names entries of rows `which` (empty when the rows run the active adapters).
std::vector<std::string> adapters_of(const std::vector<Row>& rows, const std::vector<size_t>& which) {
  std::vector<std::string> names;
  if (rows[which.front()].adapter.empty()) return names;
  for (size_t r : which) names.push_back(rows[r].adapter);
  return names;
}


/// The reference: every step recomputes the row's last `window` tokens.
void continue_uncached(PeftModel& model, Row& row, const GenerationConfig& c, std::optional<at::Generator>& gen,
                       c10::Device device) {
  const std::vector<std::string> names = row.adapter.empty() ? std::vector<std::string>{} : std::vector<std::string>{row.adapter};
  while (!row.done) {
    const auto n = std::min<int64_t>(static_cast<int64_t>(row.ids.size()), row.window);
    models::ModelInputs in;
    in.input_ids = torch::tensor(std::vector<int64_t>(row.ids.end() - n, row.ids.end()), torch::kLong).unsqueeze(0).to(device);
    const at::Tensor logits = next_logits(forward_rows(model, in, names).logits, model)[0];
    advance(row, next_token(logits, row.ids, c, gen), logits, c);
  }
}

/// The rows in one batch with a key/value cache: the (left-padded) prompts at once, then one
/// token per running row per step. A row that fills the window continues uncached.
void continue_cached(PeftModel& model, std::vector<Row>& rows, const GenerationConfig& c,
                     std::optional<at::Generator>& gen, c10::Device device) {
  std::vector<size_t> running;  // row indices, in cache order
  int64_t longest = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    if (rows[r].done) continue;
    // A prompt longer than the window starts from its last `window` tokens.
    if (static_cast<int64_t>(rows[r].ids.size()) >= rows[r].window) {
      continue_uncached(model, rows[r], c, gen, device);
      continue;
    }
    running.push_back(r);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(rows[r].ids.size()));
  }
  if (running.empty()) return;
  const auto B = static_cast<int64_t>(running.size());
  at::Tensor ids = torch::full({B, longest}, c.pad_token, torch::kLong);
  at::Tensor mask = torch::zeros({B, longest}, torch::kLong);
  at::Tensor positions = torch::zeros({B, longest}, torch::kLong);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = rows[running[b]].ids;
    const auto n = static_cast<int64_t>(p.size());
    const int64_t offset = rows[running[b]].offset;
    positions[b].fill_(offset);
    ids[b].narrow(0, longest - n, n).copy_(torch::tensor(p, torch::kLong));
    mask[b].narrow(0, longest - n, n).fill_(1);
    positions[b].narrow(0, longest - n, n).copy_(torch::arange(offset, offset + n, torch::kLong));
  }
  auto cache = std::make_shared<nn::KVCache>();
  models::ModelInputs in;
  in.kv_cache = cache;
  in.input_ids = ids.to(device);
  in.position_ids = positions.to(device);
  in.attention_mask = B > 1 || longest > static_cast<int64_t>(rows[running[0]].ids.size()) ? mask.to(device) : at::Tensor();
  while (!running.empty()) {
    const at::Tensor logits = next_logits(forward_rows(model, in, adapters_of(rows, running)).logits, model);
    std::vector<int64_t> keep, tokens, step_positions;
    for (size_t b = 0; b < running.size(); ++b) {
      Row& row = rows[running[b]];
      const at::Tensor row_logits = logits[static_cast<int64_t>(b)];
      if (!advance(row, next_token(row_logits, row.ids, c, gen), row_logits, c)) continue;
      const auto fed = static_cast<int64_t>(row.ids.size()) - 1;  // the new token's index in the row
      if (fed >= row.window) {  // the window is full: slide, uncached
        continue_uncached(model, row, c, gen, device);
        continue;
      }
      keep.push_back(static_cast<int64_t>(b));
      tokens.push_back(row.ids.back());
      step_positions.push_back(row.offset + fed);
    }
    if (keep.empty()) break;
    if (keep.size() < running.size()) {
      cache->select_rows(torch::tensor(keep, torch::kLong));
      std::vector<size_t> still;
      for (int64_t b : keep) still.push_back(running[b]);
      running = std::move(still);
    }
    in.input_ids = torch::tensor(tokens, torch::kLong).unsqueeze(1).to(device);
    in.position_ids = torch::tensor(step_positions, torch::kLong).unsqueeze(1).to(device);
    in.attention_mask = at::Tensor();  // the new tokens are attended; the cache keeps the padding
  }
}

}  // namespace

void GenerationConfig::validate() const {
  PEFT_CHECK(max_new_tokens >= 0, kC, "max_new_tokens must be >= 0, found {}", max_new_tokens);
  PEFT_CHECK(temperature >= 0.0, kC, "temperature must be >= 0, found {}", temperature);
  PEFT_CHECK(top_k >= 0, kC, "top_k must be >= 0, found {}", top_k);
  PEFT_CHECK(top_p > 0.0 && top_p <= 1.0, kC, "top_p must be in (0, 1], found {}", top_p);
  PEFT_CHECK(repetition_penalty > 0.0, kC, "repetition_penalty must be > 0, found {}", repetition_penalty);
  PEFT_CHECK(pad_token >= 0, kC, "pad_token must be a token id (>= 0), found {}", pad_token);
}

namespace {
/// Whether every adapter these rows run can decode with a key/value cache (LST's side network
/// re-reads the whole backbone stream each step and cannot).
bool cache_applies(PeftModel& model, const GenerationConfig& c) {
  const auto& names = c.adapter_names.empty() ? model.active_adapters() : c.adapter_names;
  for (const auto& name : names) {
    if (name == PeftModel::kBaseAdapterName || !model.has_adapter(name)) continue;
    const auto side = model.side_network(name);
    if (side && !side->decodes_with_kv_cache()) return false;
  }
  return true;
}
}  // namespace

std::vector<GenerationResult> generate_batch(PeftModel& model, const std::vector<std::vector<int64_t>>& prompts,
                                             const GenerationConfig& requested) {
  requested.validate();
  GenerationConfig config = requested;
  config.use_cache = requested.use_cache && cache_applies(model, requested);
  PEFT_CHECK(!prompts.empty(), kC, "no prompts");
  for (size_t i = 0; i < prompts.size(); ++i)
    PEFT_CHECK(!prompts[i].empty(), kC, "the prompt{} has no tokens", prompts.size() > 1 ? fmt::format(" {}", i) : "");
  PEFT_CHECK(config.adapter_names.empty() || config.adapter_names.size() == prompts.size(), kC,
             "adapter_names has {} names for {} prompts (one per prompt expected)", config.adapter_names.size(),
             prompts.size());
  for (size_t i = 0; i < config.adapter_names.size(); ++i)
    PEFT_CHECK(config.adapter_names[i] == PeftModel::kBaseAdapterName || model.has_adapter(config.adapter_names[i]), kC,
               "adapter_names[{}]: no adapter named '{}' (adapters: {}; '{}' runs the bare base)", i,
               config.adapter_names[i], fmt::join(model.adapters(), ", "), PeftModel::kBaseAdapterName);
  const int64_t vocab = model.base_model().geometry().vocab_size;
  PEFT_CHECK(vocab <= 0 || config.pad_token < vocab, kC, "pad_token {} is outside the vocabulary ({} tokens)",
             config.pad_token, vocab);
  const bool was_training = model.base_model().is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  const c10::Device device = model.base_model().parameters().front().device();
  std::optional<at::Generator> gen;
  if (config.seed) gen = at::make_generator<at::CPUGeneratorImpl>(*config.seed);
  if (model.base_model().decoder_start_token()) {
    std::vector<GenerationResult> out;
    try {
      out = generate_encoder_decoder(model, prompts, config, gen, device);
    } catch (...) {
      model.train(was_training);
      throw;
    }
    model.train(was_training);
    return out;
  }
  std::vector<Row> rows(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    rows[i].ids = prompts[i];
    if (!config.adapter_names.empty()) rows[i].adapter = config.adapter_names[i];
    rows[i].offset = virtual_tokens(model, rows[i].adapter);
    rows[i].window = context_window(model, rows[i].adapter);
    rows[i].result.stop_reason = "max_new_tokens";
    rows[i].done = config.max_new_tokens == 0;
  }
  try {
    if (config.use_cache) {
      continue_cached(model, rows, config, gen, device);
    } else {
      for (auto& row : rows) continue_uncached(model, row, config, gen, device);
    }
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  std::vector<GenerationResult> out;
  for (auto& row : rows) out.push_back(std::move(row.result));
  return out;
}

GenerationResult generate(PeftModel& model, const std::vector<int64_t>& prompt, const GenerationConfig& config) {
  PEFT_CHECK(!prompt.empty(), kC, "the prompt has no tokens");
  return std::move(generate_batch(model, {prompt}, config).front());
}

std::vector<int64_t> encode_prompt(const tokenizers::Tokenizer& tokenizer, const std::string& text, bool encoder_decoder) {
  std::vector<int64_t> ids = tokenizer.encode(text, /*add_special_tokens=*/!encoder_decoder);
  if (encoder_decoder && tokenizer.special().eos) ids.push_back(*tokenizer.special().eos);
  return ids;
}

}  // namespace peft
