// Sequence-to-sequence data: the seq2seq_jsonl records (padding, end tokens, truncation, prefixes,
// named errors) and T5's span corruption (the noise mask's counts, hand-worked corruption, every
// block recoverable from its input and target, fixed by seed and index).
#include <fstream>

#include <torch/torch.h>

#include <filesystem>
#include <numeric>

#include "peft/core/json_io.h"
#include "peft/data/seq2seq.h"
#include "peft/data/span_corruption.h"
#include "peft/tokenizers/tokenizer.h"
#include "peft/train/run_config.h"
#include "test_util.h"

namespace peft::test {
namespace {

std::shared_ptr<tokenizers::Tokenizer> english() { return tokenizers::load_tokenizer(source("examples/models/tiny-gpt2-en")); }

std::string write(TempDir& dir, const std::string& name, const std::string& text) {
  const std::string path = dir.file(name);
  std::ofstream(path) << text;
  return path;
}

TEST(Seq2SeqData, SourcesArePaddedAndMaskedTargetsEndInEosAndPadWithMinus100) {
  TempDir dir;
  const auto path = write(dir, "d.jsonl",
                          "{\"text\": \"The jury said it did find that\", \"label\": \"news\"}\n\n"
                          "{\"text\": \"Oh\", \"label\": \"adventure story\"}\n");
  auto tok = english();
  data::Seq2SeqOptions o;
  o.source_field = "text";
  o.target_field = "label";
  o.eos_id = *tok->special().eos;
  o.pad_id = 0;
  data::Seq2SeqDataset d(path, tok, o);
  ASSERT_EQ(d.size(), 2);
  EXPECT_EQ(d.target(1), "adventure story");
  const auto b = d.batch({0, 1});
  const auto s0 = tok->encode("The jury said it did find that", false), s1 = tok->encode("Oh", false);
  const auto t0 = tok->encode("news", false), t1 = tok->encode("adventure story", false);
  const auto S = static_cast<int64_t>(s0.size() + 1), T = static_cast<int64_t>(std::max(t0.size(), t1.size()) + 1);
  ASSERT_EQ(b.input_ids.sizes(), (std::vector<int64_t>{2, S}));
  ASSERT_EQ(b.labels.sizes(), (std::vector<int64_t>{2, T}));
  EXPECT_EQ(b.input_ids[0][S - 1].item<int64_t>(), o.eos_id);
  EXPECT_EQ(b.input_ids[1][static_cast<int64_t>(s1.size())].item<int64_t>(), o.eos_id);
  EXPECT_EQ(b.attention_mask[1].sum().item<int64_t>(), static_cast<int64_t>(s1.size() + 1));
  EXPECT_EQ(b.attention_mask[0].sum().item<int64_t>(), S);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t expected = t < static_cast<int64_t>(t0.size()) ? t0[t] : t == static_cast<int64_t>(t0.size()) ? *o.eos_id : -100;
    EXPECT_EQ(b.labels[0][t].item<int64_t>(), expected) << t;
  }
  EXPECT_EQ(d.source_tokens(1).back(), o.eos_id);
}

TEST(Seq2SeqData, TruncationKeepsTheEndTokenAndThePrefixIsRead) {
  TempDir dir;
  const auto path = write(dir, "d.jsonl", "{\"source\": \"one two three four five six seven\", \"target\": \"eight nine ten\"}\n");
  auto tok = english();
  data::Seq2SeqOptions o;
  o.source_prefix = "genre: ";
  o.max_source_length = 4;
  o.max_target_length = 3;
  o.eos_id = 2;
  data::Seq2SeqDataset d(path, tok, o);
  EXPECT_EQ(d.source(0), "genre: one two three four five six seven");
  const auto b = d.batch({0});
  EXPECT_EQ(b.input_ids.size(1), 4);
  EXPECT_EQ(b.input_ids[0][3].item<int64_t>(), 2);
  EXPECT_EQ(b.input_ids[0][0].item<int64_t>(), tok->encode("genre: one", false)[0]);
  EXPECT_EQ(b.labels.size(1), 3);
  EXPECT_EQ(b.labels[0][2].item<int64_t>(), 2);
}

TEST(Seq2SeqData, BadRecordsNameTheFileLineAndField) {
  TempDir dir;
  const auto path = write(dir, "bad.jsonl", "{\"source\": \"a\", \"target\": \"b\"}\n{\"source\": \"a\"}\n");
  auto tok = english();
  const auto e = error_of([&] { data::Seq2SeqDataset(path, tok, {}); });
  EXPECT_NE(e.find("bad.jsonl:2"), std::string::npos) << e;
  EXPECT_NE(e.find("'target'"), std::string::npos) << e;
  data::Seq2SeqOptions skip;
  skip.skip_bad_records = true;
  data::Seq2SeqDataset kept(path, tok, skip);
  EXPECT_EQ(kept.size(), 1);
  EXPECT_EQ(kept.skipped(), 1);
}

TEST(SpanCorruption, TheNoiseMaskHasT5sCountsAndStartsWithKeptTokens) {
  for (int64_t length : {10, 64, 127, 512})
    for (uint64_t seed : {0u, 7u, 123u}) {
      const auto mask = data::random_spans_noise_mask(length, 0.15, 3.0, seed);
      ASSERT_EQ(static_cast<int64_t>(mask.size()), length);
      const int64_t noise = std::count(mask.begin(), mask.end(), true);
      EXPECT_EQ(noise, std::clamp<int64_t>(std::llround(length * 0.15), 1, length - 1));
      int64_t spans = 0;
      for (int64_t i = 0; i < length; ++i) spans += mask[i] && (i == 0 || !mask[i - 1]);
      EXPECT_EQ(spans, std::max<int64_t>(1, std::llround(static_cast<double>(noise) / 3.0)));
      EXPECT_FALSE(mask[0]);
      EXPECT_EQ(mask, data::random_spans_noise_mask(length, 0.15, 3.0, seed));  // fixed by the seed
    }
  EXPECT_NE(data::random_spans_noise_mask(512, 0.15, 3.0, 1), data::random_spans_noise_mask(512, 0.15, 3.0, 2));
}

TEST(SpanCorruption, CorruptionOfAHandWorkedBlock) {
  // tokens 10..17, noise at 2,3 and 6: input keeps 10 11 <s0> 14 15 <s1> 17 </s>, target <s0> 12 13 <s1> 16 </s>.
  const std::vector<int64_t> tokens = {10, 11, 12, 13, 14, 15, 16, 17};
  const std::vector<bool> noise = {false, false, true, true, false, false, true, false};
  const auto [in, out] = data::corrupt_spans(tokens, noise, 100, 1);
  EXPECT_EQ(in, (std::vector<int64_t>{10, 11, 100, 14, 15, 101, 17, 1}));
  EXPECT_EQ(out, (std::vector<int64_t>{100, 12, 13, 101, 16, 1}));
}

TEST(SpanCorruption, EveryBlockIsRecoveredFromItsInputAndTarget) {
  auto tok = english();
  data::SpanCorruptionOptions o;
  o.block_size = 48;
  o.max_tokens = 48 * 20;
  o.sentinel_first = tok->vocab_size();
  o.eos_id = *tok->special().eos;
  o.seed = 3;
  const std::string text = source("examples/data/sotu/train.txt");
  data::SpanCorruptionDataset d(text, tok, o);
  data::TextBlocksOptions bo;
  bo.block_size = 48;
  bo.max_tokens = 48 * 20;
  data::TextBlocksDataset blocks(text, tok, bo);
  ASSERT_EQ(d.size(), blocks.size());
  std::vector<int64_t> all(static_cast<size_t>(d.size()));
  std::iota(all.begin(), all.end(), 0);
  const auto b = d.batch(all);
  const auto raw = blocks.batch(all).input_ids;
  EXPECT_LE(b.input_ids.max().item<int64_t>(), d.max_token_id());
  EXPECT_LE(b.labels.max().item<int64_t>(), d.max_token_id());
  for (int64_t i = 0; i < d.size(); ++i) {
    // Replace each sentinel of the input by its span from the target.
    std::vector<int64_t> rebuilt;
    const auto in = b.input_ids[i], target = b.labels[i];
    for (int64_t t = 0; t + 1 < in.size(0); ++t) {
      const int64_t id = in[t].item<int64_t>();
      if (id < o.sentinel_first) {
        rebuilt.push_back(id);
        continue;
      }
      int64_t j = 0;
      while (target[j].item<int64_t>() != id) ++j;
      for (++j; j < target.size(0) && target[j].item<int64_t>() < o.sentinel_first && target[j].item<int64_t>() != o.eos_id; ++j)
        rebuilt.push_back(target[j].item<int64_t>());
    }
    EXPECT_TRUE(torch::equal(torch::tensor(rebuilt, torch::kLong), raw[i])) << i;
  }
  EXPECT_TRUE(torch::equal(d.batch({4, 2}).labels[1], b.labels[2]));  // an example depends on its index alone
  // Variants: example i corrupts block i / variants, each variant with spans of its own.
  o.variants = 3;
  data::SpanCorruptionDataset three(text, tok, o);
  EXPECT_EQ(three.size(), 3 * d.size());
  const auto v = three.batch({6, 7, 8});
  EXPECT_FALSE(torch::equal(v.labels[0], v.labels[1]) && torch::equal(v.labels[1], v.labels[2]));
  EXPECT_NE(error_of([&] { three.batch({three.size()}); }).find("outside"), std::string::npos);
}

TEST(SpanCorruption, SentinelsInsideTheVocabularyOrBeyondTheModelAreRefused) {
  auto tok = english();
  data::SpanCorruptionOptions o;
  o.sentinel_first = 10;
  const std::string text = source("examples/data/sotu/train.txt");
  EXPECT_NE(error_of([&] { data::SpanCorruptionDataset(text, tok, o); }).find("inside the tokenizer's vocabulary"),
            std::string::npos);
  o.sentinel_first = tok->vocab_size();
  o.sentinels = 2;
  EXPECT_NE(error_of([&] { data::SpanCorruptionDataset(text, tok, o); }).find("sentinels"), std::string::npos);
  // A run whose model's embedding cannot hold the sentinels is refused before training.
  TempDir dir;
  nlohmann::json model = core::read_json_file(fixture("hf/models/t5/config.json"));
  model["vocab_size"] = tok->vocab_size() + 2;  // blocks of 64 use 3 sentinels
  std::filesystem::create_directories(dir.file("m"));
  std::ofstream(dir.file("m/config.json")) << model.dump();
  const nlohmann::json run = {{"model", dir.file("m")}, {"init", "config"}, {"tokenizer", source("examples/models/tiny-gpt2-en")},
                              {"data", {{"kind", "span_corruption"}, {"train", text}, {"block_size", 64}, {"max_tokens", 2000}}}};
  const auto e = error_of([&] { train::build_run(run, "run.json", true); });
  EXPECT_NE(e.find("vocab_size"), std::string::npos) << e;
}

}  // namespace
}  // namespace peft::test
