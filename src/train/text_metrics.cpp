#include "peft/train/text_metrics.h"

#include <algorithm>
#include <cctype>
#include <sstream>

namespace peft::train {

std::vector<std::string> rouge_tokens(const std::string& text) {
  std::vector<std::string> out;
  std::string current;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 128 && std::isalnum(u)) {
      current.push_back(static_cast<char>(std::tolower(u)));
    } else if (!current.empty()) {
      out.push_back(std::move(current));
      current.clear();
    }
  }
  if (!current.empty()) out.push_back(std::move(current));
  return out;
}

size_t longest_common_subsequence(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  // Two rows of the dynamic programme: O(|a|·|b|) time, O(|b|) memory.
  std::vector<size_t> previous(b.size() + 1, 0), row(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j)
      row[j] = a[i - 1] == b[j - 1] ? previous[j - 1] + 1 : std::max(previous[j], row[j - 1]);
    std::swap(previous, row);
  }
  return previous[b.size()];
}

RougeScore rouge_l(const std::string& prediction, const std::string& reference) {
  const auto p = rouge_tokens(prediction), r = rouge_tokens(reference);
  RougeScore s;
  if (p.empty() || r.empty()) return s;
  const auto lcs = static_cast<double>(longest_common_subsequence(p, r));
  s.precision = lcs / static_cast<double>(p.size());
  s.recall = lcs / static_cast<double>(r.size());
  s.f1 = lcs > 0 ? 2 * s.precision * s.recall / (s.precision + s.recall) : 0.0;
  return s;
}

namespace {
std::string collapse_whitespace(const std::string& text) {
  std::istringstream in(text);
  std::string word, out;
  while (in >> word) out += (out.empty() ? "" : " ") + word;
  return out;
}
}  // namespace

double exact_match(const std::string& prediction, const std::string& reference) {
  return collapse_whitespace(prediction) == collapse_whitespace(reference) ? 1.0 : 0.0;
}

}  // namespace peft::train
