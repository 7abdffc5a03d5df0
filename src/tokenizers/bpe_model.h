// The BPE merge engine shared by every BPE tokenizer: a vocabulary, ranked merges over token
// ids, and Hugging Face's merge order (lowest rank first, leftmost first among equals).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace peft::tokenizers {

/// A {token: id} JSON object as a dense id -> token table; duplicate or bad ids name the file.
std::vector<std::string> dense_vocab(const nlohmann::json& j, const std::string& where);

class BpeModel {
 public:
  /// `vocab[i]` is the token with id i (ids must be dense; gaps hold "").
  explicit BpeModel(std::vector<std::string> vocab);

  /// Adds merge number `rank` of tokens `a` and `b` (the merged token must be in the vocabulary);
  /// returns false when a, b or a+b is not a token.
  bool add_merge(const std::string& a, const std::string& b, int32_t rank);

  /// Applies the merges to a sequence of token ids.
  std::vector<int64_t> merge(std::vector<int64_t> symbols) const;

  std::optional<int64_t> id(const std::string& token) const;
  const std::string& token(int64_t id) const { return vocab_[static_cast<size_t>(id)]; }
  int64_t size() const { return static_cast<int64_t>(vocab_.size()); }
  size_t merge_count() const { return merges_.size(); }

 private:
  struct Merge {
    int32_t rank;
    int64_t result;
  };
  static uint64_t key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b); }

  std::vector<std::string> vocab_;
  std::unordered_map<std::string, int64_t> ids_;
  std::unordered_map<uint64_t, Merge> merges_;
};

}  // namespace peft::tokenizers
