// ROUGE-L and exact match on hand-worked cases.
#include <gtest/gtest.h>

#include "peft/train/text_metrics.h"

namespace peft::test {
namespace {

TEST(TextMetrics, RougeTokensLowerCaseAndSplitOnEverythingElse) {
  EXPECT_EQ(train::rouge_tokens("Hello, World! It's 2024."),
            (std::vector<std::string>{"hello", "world", "it", "s", "2024"}));
  EXPECT_TRUE(train::rouge_tokens(" ,.;\t").empty());
  EXPECT_EQ(train::rouge_tokens("caf\xc3\xa9 ok"), (std::vector<std::string>{"caf", "ok"}));  // non-ASCII separates
}

TEST(TextMetrics, LongestCommonSubsequenceByHand) {
  using V = std::vector<std::string>;
  EXPECT_EQ(train::longest_common_subsequence(V{"a", "b", "c", "b", "d", "a", "b"}, V{"b", "d", "c", "a", "b", "a"}), 4u);
  EXPECT_EQ(train::longest_common_subsequence(V{"a", "b"}, V{}), 0u);
  EXPECT_EQ(train::longest_common_subsequence(V{"x", "y", "z"}, V{"x", "y", "z"}), 3u);
}

TEST(TextMetrics, RougeLIsTheLcsFMeasure) {
  // "the cat on the mat" is common: 5 of 6 tokens each way.
  auto s = train::rouge_l("the cat sat on the mat", "the cat is on the mat");
  EXPECT_DOUBLE_EQ(s.precision, 5.0 / 6);
  EXPECT_DOUBLE_EQ(s.recall, 5.0 / 6);
  EXPECT_DOUBLE_EQ(s.f1, 5.0 / 6);
  // Every prediction token appears in order in a longer reference: precision 1, recall 3/6.
  s = train::rouge_l("police killed gunman", "the police killed the gunman x");
  EXPECT_DOUBLE_EQ(s.precision, 1.0);
  EXPECT_DOUBLE_EQ(s.recall, 0.5);
  // Unequal lengths: LCS 2 ("police gunman"), P = 2/3, R = 2/4, F = 2PR/(P+R) = 4/7.
  s = train::rouge_l("police kill gunman", "police killed the gunman");
  EXPECT_DOUBLE_EQ(s.precision, 2.0 / 3);
  EXPECT_DOUBLE_EQ(s.recall, 2.0 / 4);
  EXPECT_DOUBLE_EQ(s.f1, 4.0 / 7);
  // Order matters: reversed, only one token in common order.
  EXPECT_DOUBLE_EQ(train::rouge_l("a b c d", "d c b a").f1, 0.25);
  EXPECT_DOUBLE_EQ(train::rouge_l("Hello, world!", "hello world").f1, 1.0);
  EXPECT_DOUBLE_EQ(train::rouge_l("", "hello").f1, 0.0);
  EXPECT_DOUBLE_EQ(train::rouge_l("...", "...").f1, 0.0);  // no tokens on either side
  EXPECT_DOUBLE_EQ(train::rouge_l("x y", "z w").f1, 0.0);
}

TEST(TextMetrics, ExactMatchIgnoresOnlyWhitespace) {
  EXPECT_EQ(train::exact_match("  news \n", "news"), 1.0);
  EXPECT_EQ(train::exact_match("a  b", "a b"), 1.0);
  EXPECT_EQ(train::exact_match("News", "news"), 0.0);
  EXPECT_EQ(train::exact_match("news.", "news"), 0.0);
  EXPECT_EQ(train::exact_match("", ""), 1.0);
}

}  // namespace
}  // namespace peft::test
