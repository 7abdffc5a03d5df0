#include "peft/data/text_classification.h"

#include <map>
#include <set>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "peft/core/error.h"
#include "jsonl_records.h"

namespace peft::data {
namespace {
constexpr const char* kC = "data";

/// (text, label) of one line, or an error message naming what is wrong.
struct Parsed {
  std::string text, label, error;
};

Parsed parse_line(const std::string& line, const TextClassificationOptions& o) {
  Parsed p;
  const auto parsed = parse_json_object(line, p.error);
  if (!parsed) return p;
  const nlohmann::json& j = *parsed;
  if (!j.contains(o.text_field) || !j[o.text_field].is_string()) {
    p.error = fmt::format("missing string field '{}'", o.text_field);
  } else if (!j.contains(o.label_field) || !(j[o.label_field].is_string() || j[o.label_field].is_number_integer())) {
    p.error = fmt::format("missing field '{}' (a string or an integer)", o.label_field);
  } else {
    p.text = j[o.text_field].get<std::string>();
    p.label = j[o.label_field].is_string() ? j[o.label_field].get<std::string>() : j[o.label_field].dump();
  }
  return p;
}

}  // namespace

TextClassificationDataset::TextClassificationDataset(const std::string& path,
                                                     std::shared_ptr<const tokenizers::Tokenizer> tokenizer,
                                                     TextClassificationOptions options)
    : path_(path), tokenizer_(std::move(tokenizer)), options_(std::move(options)) {
  PEFT_CHECK(options_.max_length >= 2, kC, "max_length must be at least 2, found {}", options_.max_length);
  const bool fixed_labels = !options_.labels.empty();
  std::map<std::string, int64_t> index;
  for (size_t i = 0; i < options_.labels.size(); ++i) index[options_.labels[i]] = static_cast<int64_t>(i);
  std::vector<std::string> raw_labels;
  records_ = std::make_unique<JsonlRecords>(path, options_.skip_bad_records, [&](const std::string& line) {
    Parsed p = parse_line(line, options_);
    if (p.error.empty() && fixed_labels && !index.count(p.label)) {
      std::string known;
      for (const auto& l : options_.labels) known += (known.empty() ? "" : ", ") + l;
      p.error = fmt::format("label '{}' is not one of the training labels ({})", p.label, known);
    }
    if (p.error.empty()) raw_labels.push_back(p.label);
    return p.error;
  });
  if (!fixed_labels) {
    std::set<std::string> found(raw_labels.begin(), raw_labels.end());
    options_.labels.assign(found.begin(), found.end());
    for (size_t i = 0; i < options_.labels.size(); ++i) index[options_.labels[i]] = static_cast<int64_t>(i);
  }
  for (const auto& l : raw_labels) label_ids_.push_back(index.at(l));
  seen_truncated_.assign(static_cast<size_t>(records_->size()), false);
}

TextClassificationDataset::~TextClassificationDataset() = default;

int64_t TextClassificationDataset::size() const { return records_->size(); }
int64_t TextClassificationDataset::skipped() const { return records_->skipped(); }

std::string TextClassificationDataset::text(int64_t index) const {
  return parse_line(records_->line(index), options_).text;
}

models::ModelInputs TextClassificationDataset::batch(const std::vector<int64_t>& indices) const {
  std::vector<std::vector<int64_t>> rows;
  int64_t longest = 1;
  for (int64_t i : indices) {
    auto ids = tokenizer_->encode(text(i));
    if (static_cast<int64_t>(ids.size()) > options_.max_length) {
      ids.resize(static_cast<size_t>(options_.max_length));
      std::lock_guard<std::mutex> lock(mutex_);
      seen_truncated_[static_cast<size_t>(i)] = true;
    }
    if (ids.empty()) ids.push_back(options_.pad_id);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(ids.size()));
    rows.push_back(std::move(ids));
  }
  const auto B = static_cast<int64_t>(rows.size());
  auto input_ids = torch::full({B, longest}, options_.pad_id, torch::kLong);
  auto mask = torch::zeros({B, longest}, torch::kLong);
  auto labels = torch::empty({B}, torch::kLong);
  for (int64_t b = 0; b < B; ++b) {
    const auto n = static_cast<int64_t>(rows[b].size());
    input_ids[b].slice(0, 0, n).copy_(torch::tensor(rows[b], torch::kLong));
    mask[b].slice(0, 0, n).fill_(1);
    labels[b] = label(indices[static_cast<size_t>(b)]);
  }
  models::ModelInputs in;
  in.input_ids = input_ids;
  in.attention_mask = mask;
  in.labels = labels;
  return in;
}

int64_t TextClassificationDataset::truncated() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::count(seen_truncated_.begin(), seen_truncated_.end(), true);
}

std::string TextClassificationDataset::describe() const {
  std::vector<int64_t> counts(options_.labels.size(), 0);
  for (auto l : label_ids_) ++counts[static_cast<size_t>(l)];
  std::string per_label;
  for (size_t i = 0; i < counts.size(); ++i)
    per_label += fmt::format("{}{} {}", i ? ", " : "", counts[i], options_.labels[i]);
  return fmt::format("{}: {} records ({}); {} skipped; {} truncated to {} tokens so far", path_, size(), per_label,
                     skipped(), truncated(), options_.max_length);
}

}  // namespace peft::data
