#include "encoder_decoder_generation.h"

#include <torch/torch.h>

#include "next_logits.h"
#include "peft/core/error.h"
#include "peft/nn/kv_cache.h"
#include "peft/peft_model.h"

namespace peft {
namespace {

/// One prompt's decoding: `decoded` is the decoder's input so far (start token, then the output).
struct Seq2SeqRow {
  std::vector<int64_t> decoded;
  GenerationResult result;
  bool done = false;
};

/// Every prompt right-padded into one encoder batch (the mask undefined when none is padded).
std::pair<at::Tensor, at::Tensor> encoder_batch(const std::vector<std::vector<int64_t>>& prompts, int64_t pad) {
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  const auto B = static_cast<int64_t>(prompts.size()), T = static_cast<int64_t>(longest);
  at::Tensor ids = torch::full({B, T}, pad, torch::kLong), mask = torch::zeros({B, T}, torch::kLong);
  bool padded = false;
  for (int64_t b = 0; b < B; ++b) {
    const auto n = static_cast<int64_t>(prompts[b].size());
    ids[b].narrow(0, 0, n).copy_(torch::tensor(prompts[b], torch::kLong));
    mask[b].narrow(0, 0, n).fill_(1);
    padded = padded || n < T;
  }
  return {ids, padded ? mask : at::Tensor()};
}

/// The reference: every step runs the encoder and the whole decoder input again.
void decode_uncached(PeftModel& model, const std::vector<int64_t>& prompt, const std::string& adapter, Seq2SeqRow& row,
                     const GenerationConfig& c, std::optional<at::Generator>& gen, c10::Device device) {
  const std::vector<std::string> names = adapter.empty() ? std::vector<std::string>{} : std::vector<std::string>{adapter};
  models::ModelInputs in;
  in.input_ids = torch::tensor(prompt, torch::kLong).unsqueeze(0).to(device);
  while (!row.done) {
    in.decoder_input_ids = torch::tensor(row.decoded, torch::kLong).unsqueeze(0).to(device);
    const at::Tensor logits = next_logits(forward_rows(model, in, names).logits, model)[0];
    row.done = !record_token(row.result, row.decoded, next_token(logits, row.decoded, c, gen), logits, c);
  }
}

}  // namespace

std::vector<GenerationResult> generate_encoder_decoder(PeftModel& model, const std::vector<std::vector<int64_t>>& prompts,
                                                       const GenerationConfig& c, std::optional<at::Generator>& gen,
                                                       c10::Device device) {
  const int64_t start = *model.base_model().decoder_start_token();
  std::vector<Seq2SeqRow> rows(prompts.size());
  for (auto& row : rows) {
    row.decoded = {start};
    row.result.stop_reason = "max_new_tokens";
    row.done = c.max_new_tokens == 0;
  }
  auto adapter = [&](size_t r) { return c.adapter_names.empty() ? std::string() : c.adapter_names[r]; };
  if (!c.use_cache) {
    for (size_t r = 0; r < rows.size(); ++r) decode_uncached(model, prompts[r], adapter(r), rows[r], c, gen, device);
  } else if (c.max_new_tokens > 0) {
    std::vector<size_t> running(rows.size());  // row indices, in cache order
    for (size_t r = 0; r < rows.size(); ++r) running[r] = r;
    auto [ids, mask] = encoder_batch(prompts, c.pad_token);
    models::ModelInputs in;
    in.kv_cache = std::make_shared<nn::KVCache>();
    in.input_ids = ids.to(device);
    if (mask.defined()) in.attention_mask = mask.to(device);
    in.decoder_input_ids = torch::full({static_cast<int64_t>(rows.size()), 1}, start, torch::kLong).to(device);
    while (!running.empty()) {
      std::vector<std::string> names;
      if (!c.adapter_names.empty())
        for (size_t r : running) names.push_back(c.adapter_names[r]);
      const auto out = forward_rows(model, in, names);
      // Encoded once: the cache now holds the encoder's keys and mask, so later steps run the decoder alone.
      in.input_ids = at::Tensor();
      in.attention_mask = at::Tensor();
      const at::Tensor logits = next_logits(out.logits, model);
      std::vector<int64_t> keep, tokens;
      for (size_t b = 0; b < running.size(); ++b) {
        Seq2SeqRow& row = rows[running[b]];
        const at::Tensor row_logits = logits[static_cast<int64_t>(b)];
        row.done = !record_token(row.result, row.decoded, next_token(row_logits, row.decoded, c, gen), row_logits, c);
        if (row.done) continue;
        keep.push_back(static_cast<int64_t>(b));
        tokens.push_back(row.decoded.back());
      }
      if (keep.empty()) break;
      if (keep.size() < running.size()) {  // finished rows leave the cache
        const at::Tensor idx = torch::tensor(keep, torch::kLong);
        in.kv_cache->select_rows(idx);
        std::vector<size_t> still;
        for (int64_t b : keep) still.push_back(running[static_cast<size_t>(b)]);
        running = std::move(still);
      }
      in.decoder_input_ids = torch::tensor(tokens, torch::kLong).unsqueeze(1).to(device);
    }
  }
  std::vector<GenerationResult> out;
  for (auto& row : rows) out.push_back(std::move(row.result));
  return out;
}

}  // namespace peft
