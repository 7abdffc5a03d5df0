// Data readers: JSONL classification (errors by file:line, skipping, labels, padding,
// truncation), language-model blocks, IDX images, and the deterministic resumable sampler.
#include <fstream>
#include <numeric>

#include <torch/torch.h>

#include "peft/data/idx_images.h"
#include "peft/data/text_blocks.h"
#include "peft/data/text_classification.h"
#include "peft/tokenizers/tokenizer.h"
#include "test_util.h"

namespace peft::test {
namespace {

std::shared_ptr<const tokenizers::Tokenizer> gpt2_tokenizer() {
  static auto tok = tokenizers::load_tokenizer(fixture("tokenizers/gpt2"));
  return tok;
}

void write(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

TEST(TextClassification, ReadsLabelsPadsAndTruncates) {
  TempDir dir;
  write(dir.file("d.jsonl"),
        "{\"text\": \"hello there\", \"label\": \"spam\"}\n\n"
        "{\"text\": \"a much longer message that will certainly be cut short\", \"label\": \"ham\"}\n"
        "{\"text\": \"x\", \"label\": \"spam\", \"extra\": 1}\n");
  data::TextClassificationOptions o;
  o.max_length = 5;
  o.pad_id = 50256;
  data::TextClassificationDataset ds(dir.file("d.jsonl"), gpt2_tokenizer(), o);
  ASSERT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.labels(), (std::vector<std::string>{"ham", "spam"}));
  EXPECT_EQ(ds.label(0), 1);
  EXPECT_EQ(ds.text(1).substr(0, 6), "a much");
  auto b = ds.batch({0, 1, 2});
  ASSERT_EQ(b.input_ids.sizes(), (c10::IntArrayRef{3, 5}));
  EXPECT_EQ(b.attention_mask[0].sum().item<int64_t>(), 2);  // "hello", " there"
  EXPECT_EQ(b.input_ids[0][4].item<int64_t>(), 50256);
  EXPECT_EQ(b.attention_mask[1].sum().item<int64_t>(), 5);
  EXPECT_TRUE(torch::equal(b.labels, torch::tensor({1, 0, 1}, torch::kLong)));
  EXPECT_EQ(ds.truncated(), 1);
  EXPECT_NE(ds.describe().find("1 truncated"), std::string::npos) << ds.describe();
}

TEST(TextClassification, MalformedRecordsAreNamedByLineOrCounted) {
  TempDir dir;
  write(dir.file("bad.jsonl"),
        "{\"text\": \"ok\", \"label\": \"a\"}\n{\"text\": \"no label\"}\n{not json\n{\"text\": \"b\", \"label\": \"b\"}\n");
  auto msg = error_of([&] { data::TextClassificationDataset(dir.file("bad.jsonl"), gpt2_tokenizer(), {}); });
  EXPECT_NE(msg.find("bad.jsonl:2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'label'"), std::string::npos) << msg;
  data::TextClassificationOptions skip;
  skip.skip_bad_records = true;
  data::TextClassificationDataset ds(dir.file("bad.jsonl"), gpt2_tokenizer(), skip);
  EXPECT_EQ(ds.size(), 2);
  EXPECT_EQ(ds.skipped(), 2);
  // Evaluation data must use the training labels.
  write(dir.file("eval.jsonl"), "{\"text\": \"t\", \"label\": \"a\"}\n{\"text\": \"t\", \"label\": \"zzz\"}\n");
  data::TextClassificationOptions fixed;
  fixed.labels = ds.labels();
  msg = error_of([&] { data::TextClassificationDataset(dir.file("eval.jsonl"), gpt2_tokenizer(), fixed); });
  EXPECT_NE(msg.find("eval.jsonl:2: label 'zzz' is not one of the training labels (a, b)"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { data::TextClassificationDataset(dir.file("missing.jsonl"), gpt2_tokenizer(), {}); })
                .find("missing.jsonl"),
            std::string::npos);
  // A number JSON cannot hold is a bad record too, named by its line (found by fuzzing: it escaped
  // as a bare nlohmann exception).
  write(dir.file("huge.jsonl"), "{\"text\": \"ok\", \"label\": \"a\"}\n{\"text\": \"x\", \"label\": 1e309}\n");
  msg = error_of([&] { data::TextClassificationDataset(dir.file("huge.jsonl"), gpt2_tokenizer(), {}); });
  EXPECT_NE(msg.find("huge.jsonl:2: invalid JSON"), std::string::npos) << msg;
  EXPECT_EQ(data::TextClassificationDataset(dir.file("huge.jsonl"), gpt2_tokenizer(), skip).skipped(), 1);
}

TEST(TextBlocks, PacksDocumentsWithEndOfText) {
  TempDir dir;
  write(dir.file("t.txt"), "Call me Ishmael.\nSome years ago.\n\nA second document here.\n");
  data::TextBlocksOptions o;
  o.block_size = 4;
  data::TextBlocksDataset ds(dir.file("t.txt"), gpt2_tokenizer(), o);
  auto tok = gpt2_tokenizer();
  auto first = tok->encode("Call me Ishmael.\n");
  EXPECT_EQ(ds.size(), ds.tokens() / 4);
  auto b = ds.batch({0});
  for (int64_t k = 0; k < 4; ++k) EXPECT_EQ(b.input_ids[0][k].item<int64_t>(), first[static_cast<size_t>(k)]);
  EXPECT_TRUE(torch::equal(b.labels, b.input_ids));
  std::vector<int64_t> every(static_cast<size_t>(ds.size()));
  std::iota(every.begin(), every.end(), 0);
  auto all = ds.batch(every);
  EXPECT_GE((all.input_ids == 50256).sum().item<int64_t>(), 1) << "documents are separated by <|endoftext|>: "
                                                               << all.input_ids;
}

TEST(IdxImages, ReadsResizesAndNormalizes) {
  TempDir dir;
  std::string images = std::string("\0\0\x08\x03\0\0\0\x02\0\0\0\x02\0\0\0\x02", 16) + std::string("\x00\xff\xff\x00\x10\x20\x30\x40", 8);
  std::string labels = std::string("\0\0\x08\x01\0\0\0\x02", 8) + std::string("\x07\x03", 2);
  write(dir.file("img"), images);
  write(dir.file("lab"), labels);
  data::IdxImagesOptions o;
  o.image_size = 4;
  o.channels = 3;
  data::IdxImagesDataset ds(dir.file("img"), dir.file("lab"), o);
  ASSERT_EQ(ds.size(), 2);
  auto b = ds.batch({0, 1});
  EXPECT_EQ(b.pixel_values.sizes(), (c10::IntArrayRef{2, 3, 4, 4}));
  EXPECT_NEAR(b.pixel_values[0][0][0][0].item<double>(), -1.0, 1e-6);  // pixel 0 -> -1
  EXPECT_TRUE(torch::equal(b.labels, torch::tensor({7, 3}, torch::kLong)));
  write(dir.file("short"), images.substr(0, 20));
  EXPECT_NE(error_of([&] { data::read_idx(dir.file("short")); }).find("expected 8 bytes"), std::string::npos);
  write(dir.file("lab3"), std::string("\0\0\x08\x01\0\0\0\x03", 8) + std::string("\x01\x02\x03", 3));
  EXPECT_NE(error_of([&] { data::IdxImagesDataset(dir.file("img"), dir.file("lab3"), o); }).find("expected 2 labels"),
            std::string::npos);
}

TEST(Sampler, DeterministicPerSeedAndResumable) {
  data::Sampler a(10, 7, true), b(10, 7, true), c(10, 8, true);
  std::vector<int64_t> seq_a, seq_c;
  for (int i = 0; i < 7; ++i) {
    auto x = a.next(3);
    seq_a.insert(seq_a.end(), x.begin(), x.end());
    auto y = c.next(3);
    seq_c.insert(seq_c.end(), y.begin(), y.end());
  }
  EXPECT_NE(seq_a, seq_c);
  // Each epoch is a permutation; batches do not straddle epochs (3 + 3 + 3 + 1).
  std::vector<int64_t> epoch0(seq_a.begin(), seq_a.begin() + 10);
  std::sort(epoch0.begin(), epoch0.end());
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(epoch0[i], i);
  for (int i = 0; i < 3; ++i) b.next(3);
  auto saved = b.state();
  data::Sampler resumed(10, 7, true);
  resumed.restore(saved);
  std::vector<int64_t> tail_b, tail_r;
  for (int i = 0; i < 4; ++i) {
    auto x = b.next(3), y = resumed.next(3);
    tail_b.insert(tail_b.end(), x.begin(), x.end());
    tail_r.insert(tail_r.end(), y.begin(), y.end());
  }
  EXPECT_EQ(tail_b, tail_r);
  EXPECT_EQ(data::permutation(5, 1), data::permutation(5, 1));
}

}  // namespace
}  // namespace peft::test
