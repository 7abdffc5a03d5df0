// Metrics of generated text against a reference, for sequence-to-sequence evaluation: ROUGE-L
// (Lin 2004: the longest common subsequence of tokens) and exact match. Tokens follow the
// rouge_score package's default: lower-cased ASCII letters and digits, everything else a separator.
#pragma once

#include <string>
#include <vector>

namespace peft::train {

/// Lower-cased runs of [a-z0-9]; every other byte separates tokens.
std::vector<std::string> rouge_tokens(const std::string& text);

/// Length of the longest common subsequence of two token sequences.
size_t longest_common_subsequence(const std::vector<std::string>& a, const std::vector<std::string>& b);

struct RougeScore {
  double precision = 0;  ///< LCS / prediction tokens
  double recall = 0;     ///< LCS / reference tokens
  double f1 = 0;         ///< their harmonic mean (0 when either is 0)
};

/// ROUGE-L of one prediction against one reference (0 when either has no tokens).
RougeScore rouge_l(const std::string& prediction, const std::string& reference);

/// 1 when the two texts are equal after trimming and collapsing whitespace, else 0.
double exact_match(const std::string& prediction, const std::string& reference);

}  // namespace peft::train
