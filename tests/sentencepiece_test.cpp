// A SentencePiece BPE vocabulary trained with spm_train on real text, encoded by our
// tokenizer.json BPE, must give the ids spm_encode (the reference implementation) gives.
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "peft/tokenizers/sentencepiece.h"
#include "peft/tokenizers/tokenizer.h"
#include "test_util.h"

namespace peft::test {
namespace {

bool have(const char* tool) { return std::system((std::string("command -v ") + tool + " > /dev/null 2>&1").c_str()) == 0; }

TEST(SentencePiece, TrainedVocabularyEncodesLikeSpmEncode) {
  if (!have("spm_train") || !have("spm_encode")) GTEST_SKIP() << "the sentencepiece tools are not installed";
  TempDir dir;
  const std::string corpus = std::string(PEFT_SOURCE_DIR) + "/examples/data/mobydick/train.txt";
  tokenizers::SentencePieceOptions o;
  o.vocab_size = 1000;
  tokenizers::train_sentencepiece_bpe(corpus, dir.path(), o);
  auto tok = tokenizers::load_tokenizer(dir.path());
  EXPECT_EQ(tok->vocab_size(), 1000);

  // Held-out lines, plus characters the vocabulary never saw (byte fallback).
  std::ifstream test(std::string(PEFT_SOURCE_DIR) + "/examples/data/mobydick/test.txt");
  std::vector<std::string> lines;
  for (std::string l; std::getline(test, l) && lines.size() < 300;)
    if (!l.empty()) lines.push_back(l);
  lines.push_back("naïve café — 日本語 😀  double  spaces");
  {
    std::ofstream out(dir.file("lines.txt"));
    for (const auto& l : lines) out << l << "\n";
  }
  ASSERT_EQ(std::system(("spm_encode --model=" + dir.file("spm.model") + " --output_format=id < " +
                         dir.file("lines.txt") + " > " + dir.file("ids.txt"))
                            .c_str()),
            0);
  std::ifstream ids(dir.file("ids.txt"));
  size_t checked = 0, tokens = 0;
  for (const auto& l : lines) {
    std::string row;
    ASSERT_TRUE(std::getline(ids, row));
    std::istringstream ss(row);
    std::vector<int64_t> expected;
    for (int64_t v; ss >> v;) expected.push_back(v);
    EXPECT_EQ(tok->encode(l, /*add_special_tokens=*/false), expected) << l;
    EXPECT_EQ(tok->decode(tok->encode(l)), l);
    ++checked;
    tokens += expected.size();
  }
  EXPECT_EQ(checked, lines.size());
  EXPECT_GT(tokens, 3000u);
}

}  // namespace
}  // namespace peft::test
