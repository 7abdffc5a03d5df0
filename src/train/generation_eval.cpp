#include "peft/train/generation_eval.h"

#include <algorithm>

#include <fmt/format.h>

#include "peft/core/error.h"
#include "peft/data/seq2seq.h"
#include "peft/data/subset.h"
#include "peft/tokenizers/tokenizer.h"
#include "peft/train/text_metrics.h"

namespace peft::train {

std::string GenerationScores::to_json() const {
  return fmt::format("{{\"exact_match\": {:.6f}, \"rouge_l\": {:.6f}, \"generated\": {}}}", exact_match, rouge_l, examples);
}

namespace {

/// A seq2seq dataset's records in the order a (subset) view presents them.
struct Seq2SeqView {
  const data::Seq2SeqDataset* records = nullptr;
  std::vector<int64_t> order;  ///< empty: the records' own order
  int64_t size() const { return order.empty() ? records->size() : static_cast<int64_t>(order.size()); }
  int64_t at(int64_t i) const { return order.empty() ? i : order[static_cast<size_t>(i)]; }
};

std::optional<Seq2SeqView> view_of(const data::Dataset& d) {
  if (const auto* s = dynamic_cast<const data::Seq2SeqDataset*>(&d)) return Seq2SeqView{s, {}};
  if (const auto* sub = dynamic_cast<const data::SubsetDataset*>(&d))
    if (const auto parent = view_of(*sub->parent())) {
      Seq2SeqView v{parent->records, {}};
      for (int64_t i : sub->indices()) v.order.push_back(parent->at(i));
      return v;
    }
  return std::nullopt;
}

}  // namespace

std::string decode_generated(const tokenizers::Tokenizer& tokenizer, const std::vector<int64_t>& ids) {
  const int64_t vocab = tokenizer.vocab_size();
  std::string text;
  std::vector<int64_t> run;  // ids the tokenizer knows, decoded together (BPE pieces join)
  for (int64_t id : ids) {
    if (id >= 0 && id < vocab) {
      run.push_back(id);
      continue;
    }
    text += tokenizer.decode(run) + fmt::format("<extra_id_{}>", id - vocab);
    run.clear();
  }
  return text + tokenizer.decode(run);
}

bool is_seq2seq(const data::Dataset& dataset) { return view_of(dataset).has_value(); }

GenerationScores evaluate_generation(PeftModel& model, const data::Dataset& data,
                                     const tokenizers::Tokenizer& tokenizer, GenerationConfig config, int64_t batch_size,
                                     int64_t max_examples) {
  PEFT_CHECK(batch_size > 0, "train", "evaluate_generation: batch_size must be positive, found {}", batch_size);
  const auto view = view_of(data);
  PEFT_CHECK(view, "train", "evaluate_generation needs sequence-to-sequence data (seq2seq_jsonl), found {}", data.describe());
  const data::Seq2SeqDataset& dataset = *view->records;
  if (const auto eos = tokenizer.special().eos) config.stop_tokens.push_back(*eos);
  const int64_t n = max_examples > 0 ? std::min(max_examples, view->size()) : view->size();
  GenerationScores s;
  double em = 0, rouge = 0;
  for (int64_t first = 0; first < n; first += batch_size) {
    std::vector<std::pair<std::string, std::string>> records;  // each record read once
    std::vector<std::vector<int64_t>> prompts;
    for (int64_t i = first; i < std::min(n, first + batch_size); ++i) {
      records.push_back(dataset.record(view->at(i)));
      prompts.push_back(dataset.source_tokens(records.back().first));
    }
    const auto results = generate_batch(model, prompts, config);
    for (size_t r = 0; r < results.size(); ++r) {
      const auto& [source, target] = records[r];
      const std::string prediction = decode_generated(tokenizer, results[r].tokens);
      em += exact_match(prediction, target);
      rouge += rouge_l(prediction, target).f1;
      if (s.samples.size() < 5) s.samples.push_back({source, prediction, target});
    }
  }
  s.examples = n;
  s.exact_match = n > 0 ? em / static_cast<double>(n) : 0;
  s.rouge_l = n > 0 ? rouge / static_cast<double>(n) : 0;
  return s;
}

}  // namespace peft::train
