#include "peft/data/span_corruption.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::data {
namespace {
constexpr const char* kC = "data";

/// `items` split into `segments` non-empty runs at random cut points; their lengths.
std::vector<int64_t> random_segmentation(int64_t items, int64_t segments, uint64_t seed) {
  std::vector<int64_t> cuts;
  if (segments > 1) {
    const auto order = permutation(items - 1, seed);  // cut after position order[k] + 1
    cuts.assign(order.begin(), order.begin() + (segments - 1));
    std::sort(cuts.begin(), cuts.end());
  }
  std::vector<int64_t> lengths;
  int64_t start = 0;
  for (int64_t c : cuts) {
    lengths.push_back(c + 1 - start);
    start = c + 1;
  }
  lengths.push_back(items - start);
  return lengths;
}

/// The span counts T5 derives from a block's length.
std::pair<int64_t, int64_t> noise_counts(int64_t length, double density, double mean_span) {
  const int64_t noise = std::clamp<int64_t>(std::llround(static_cast<double>(length) * density), 1, length - 1);
  const int64_t spans = std::max<int64_t>(1, std::llround(static_cast<double>(noise) / mean_span));
  return {noise, std::min(spans, std::min(noise, length - noise))};
}

}  // namespace

std::vector<bool> random_spans_noise_mask(int64_t length, double density, double mean_span, uint64_t seed) {
  PEFT_CHECK(length >= 2, kC, "span corruption needs blocks of at least 2 tokens, found {}", length);
  const auto [noise, spans] = noise_counts(length, density, mean_span);
  const auto noise_lengths = random_segmentation(noise, spans, seed * 2 + 1);
  const auto keep_lengths = random_segmentation(length - noise, spans, seed * 2 + 2);
  std::vector<bool> mask;
  mask.reserve(static_cast<size_t>(length));
  for (int64_t s = 0; s < spans; ++s) {
    mask.insert(mask.end(), static_cast<size_t>(keep_lengths[s]), false);
    mask.insert(mask.end(), static_cast<size_t>(noise_lengths[s]), true);
  }
  return mask;
}

std::pair<std::vector<int64_t>, std::vector<int64_t>> corrupt_spans(const std::vector<int64_t>& tokens,
                                                                   const std::vector<bool>& noise, int64_t sentinel_first,
                                                                   int64_t eos_id) {
  PEFT_CHECK(tokens.size() == noise.size(), kC, "{} tokens but a noise mask of {}", tokens.size(), noise.size());
  std::vector<int64_t> input, target;
  int64_t span = -1;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const bool starts = noise[i] && (i == 0 || !noise[i - 1]);
    if (starts) ++span;
    if (!noise[i]) {
      input.push_back(tokens[i]);
    } else {
      if (starts) {
        input.push_back(sentinel_first + span);
        target.push_back(sentinel_first + span);
      }
      target.push_back(tokens[i]);
    }
  }
  input.push_back(eos_id);
  target.push_back(eos_id);
  return {input, target};
}

SpanCorruptionDataset::SpanCorruptionDataset(const std::string& path, std::shared_ptr<const tokenizers::Tokenizer> tokenizer,
                                             SpanCorruptionOptions options)
    : options_(options), vocab_(tokenizer->vocab_size()) {
  PEFT_CHECK(options_.noise_density > 0 && options_.noise_density < 1, kC, "noise_density must be in (0, 1), found {}",
             options_.noise_density);
  PEFT_CHECK(options_.variants >= 1, kC, "variants must be >= 1, found {}", options_.variants);
  PEFT_CHECK(options_.mean_noise_span_length >= 1, kC, "mean_noise_span_length must be >= 1, found {}",
             options_.mean_noise_span_length);
  PEFT_CHECK(options_.sentinel_first >= vocab_, kC,
             "sentinel_first {} is inside the tokenizer's vocabulary ({} tokens): sentinels must be ids of their own",
             options_.sentinel_first, vocab_);
  const auto spans = noise_counts(std::max<int64_t>(options_.block_size, 2), options_.noise_density,
                                  options_.mean_noise_span_length).second;
  PEFT_CHECK(options_.sentinels >= spans, kC,
             "blocks of {} tokens at noise_density {} need {} sentinels, but sentinels is {}", options_.block_size,
             options_.noise_density, spans, options_.sentinels);
  TextBlocksOptions b;
  b.block_size = options_.block_size;
  b.max_tokens = options_.max_tokens;
  blocks_ = std::make_unique<TextBlocksDataset>(path, std::move(tokenizer), b);
}

int64_t SpanCorruptionDataset::max_token_id() const {
  return options_.sentinel_first +
         noise_counts(options_.block_size, options_.noise_density, options_.mean_noise_span_length).second - 1;
}

models::ModelInputs SpanCorruptionDataset::batch(const std::vector<int64_t>& indices) const {
  std::vector<int64_t> block_of;
  for (int64_t i : indices) {
    PEFT_CHECK(i >= 0 && i < size(), kC, "example {} is outside [0, {})", i, size());
    block_of.push_back(i / options_.variants);
  }
  const at::Tensor blocks = blocks_->batch(block_of).input_ids;
  std::vector<std::vector<int64_t>> inputs, targets;
  for (size_t b = 0; b < indices.size(); ++b) {
    const at::Tensor row = blocks[static_cast<int64_t>(b)].contiguous();
    std::vector<int64_t> tokens(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
    // splitmix-style mixing keeps neighbouring blocks' spans unrelated.
    const uint64_t seed = options_.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(indices[b]);
    const auto noise = random_spans_noise_mask(static_cast<int64_t>(tokens.size()), options_.noise_density,
                                               options_.mean_noise_span_length, seed);
    auto [in, out] = corrupt_spans(tokens, noise, options_.sentinel_first, options_.eos_id);
    inputs.push_back(std::move(in));
    targets.push_back(std::move(out));
  }
  auto stack = [](const std::vector<std::vector<int64_t>>& rows) {
    std::vector<at::Tensor> t;
    for (const auto& r : rows) t.push_back(torch::tensor(r, torch::kLong));
    return torch::stack(t);
  };
  models::ModelInputs in;
  in.input_ids = stack(inputs);
  in.attention_mask = torch::ones_like(in.input_ids);
  in.labels = stack(targets);
  return in;
}

std::string SpanCorruptionDataset::describe() const {
  return fmt::format("{} (span corruption: {} variant(s) of each, density {}, mean span {}, sentinels from {})",
                     blocks_->describe(), options_.variants, options_.noise_density, options_.mean_noise_span_length,
                     options_.sentinel_first);
}

}  // namespace peft::data
