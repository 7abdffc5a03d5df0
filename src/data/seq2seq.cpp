#include "peft/data/seq2seq.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "peft/core/error.h"
#include "jsonl_records.h"

namespace peft::data {
namespace {
constexpr const char* kC = "data";

/// A JSON string, or an integer / number label written as text.
std::optional<std::string> text_of(const nlohmann::json& j, const std::string& field) {
  if (!j.contains(field)) return std::nullopt;
  const auto& v = j[field];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return v.dump();
  return std::nullopt;
}

/// (source, target) of one line, or an error message naming what is wrong.
struct Parsed {
  std::string source, target, error;
};

Parsed parse_line(const std::string& line, const Seq2SeqOptions& o) {
  Parsed p;
  const auto parsed = parse_json_object(line, p.error);
  if (!parsed) return p;
  const nlohmann::json& j = *parsed;
  const auto s = text_of(j, o.source_field), t = text_of(j, o.target_field);
  if (!s) p.error = fmt::format("missing string field '{}'", o.source_field);
  else if (!t) p.error = fmt::format("missing string field '{}'", o.target_field);
  else {
    p.source = o.source_prefix + *s;
    p.target = *t;
  }
  return p;
}

}  // namespace

Seq2SeqDataset::Seq2SeqDataset(const std::string& path, std::shared_ptr<const tokenizers::Tokenizer> tokenizer,
                               Seq2SeqOptions options)
    : path_(path), tokenizer_(std::move(tokenizer)), options_(std::move(options)) {
  PEFT_CHECK(options_.max_source_length >= 2 && options_.max_target_length >= 2, kC,
             "max_source_length and max_target_length must be at least 2, found {} and {}", options_.max_source_length,
             options_.max_target_length);
  records_ = std::make_unique<JsonlRecords>(path, options_.skip_bad_records,
                                            [&](const std::string& line) { return parse_line(line, options_).error; });
}

Seq2SeqDataset::~Seq2SeqDataset() = default;

int64_t Seq2SeqDataset::size() const { return records_->size(); }
int64_t Seq2SeqDataset::skipped() const { return records_->skipped(); }

std::pair<std::string, std::string> Seq2SeqDataset::record(int64_t index) const {
  const std::string line = records_->line(index);
  Parsed p = parse_line(line, options_);
  PEFT_CHECK(p.error.empty(), kC, "{}: record {} no longer parses: {} (was the file changed?)", path_, index, p.error);
  return {std::move(p.source), std::move(p.target)};
}

std::string Seq2SeqDataset::source(int64_t index) const { return record(index).first; }
std::string Seq2SeqDataset::target(int64_t index) const { return record(index).second; }

std::vector<int64_t> Seq2SeqDataset::encode(const std::string& text, int64_t max_length) const {
  auto ids = tokenizer_->encode(text, /*add_special_tokens=*/false);
  const auto room = static_cast<size_t>(max_length - (options_.eos_id ? 1 : 0));
  if (ids.size() > room) ids.resize(room);
  if (options_.eos_id) ids.push_back(*options_.eos_id);
  return ids;
}

std::vector<int64_t> Seq2SeqDataset::source_tokens(const std::string& source) const {
  auto ids = encode(source, options_.max_source_length);
  if (ids.empty()) ids.push_back(options_.pad_id);
  return ids;
}

models::ModelInputs Seq2SeqDataset::batch(const std::vector<int64_t>& indices) const {
  std::vector<std::vector<int64_t>> sources, targets;
  int64_t source_len = 1, target_len = 1;
  for (int64_t i : indices) {
    auto [s, t] = record(i);
    sources.push_back(source_tokens(s));
    targets.push_back(encode(t, options_.max_target_length));
    source_len = std::max<int64_t>(source_len, static_cast<int64_t>(sources.back().size()));
    target_len = std::max<int64_t>(target_len, static_cast<int64_t>(targets.back().size()));
  }
  const auto B = static_cast<int64_t>(indices.size());
  auto input_ids = torch::full({B, source_len}, options_.pad_id, torch::kLong);
  auto mask = torch::zeros({B, source_len}, torch::kLong);
  auto labels = torch::full({B, target_len}, -100, torch::kLong);
  for (int64_t b = 0; b < B; ++b) {
    const auto n = static_cast<int64_t>(sources[b].size()), m = static_cast<int64_t>(targets[b].size());
    input_ids[b].narrow(0, 0, n).copy_(torch::tensor(sources[b], torch::kLong));
    mask[b].narrow(0, 0, n).fill_(1);
    if (m > 0) labels[b].narrow(0, 0, m).copy_(torch::tensor(targets[b], torch::kLong));
  }
  models::ModelInputs in;
  in.input_ids = input_ids;
  in.attention_mask = mask;
  in.labels = labels;
  return in;
}

std::string Seq2SeqDataset::describe() const {
  return fmt::format("{}: {} records ('{}' -> '{}'); {} skipped; sources cut at {} tokens, targets at {}", path_,
                     size(), options_.source_field, options_.target_field, skipped(), options_.max_source_length,
                     options_.max_target_length);
}

}  // namespace peft::data
