#include "bpe_model.h"

#include <queue>

#include <nlohmann/json.hpp>

#include "peft/core/error.h"

namespace peft::tokenizers {

std::vector<std::string> dense_vocab(const nlohmann::json& j, const std::string& where) {
  const char* c = "tokenizers";
  PEFT_CHECK(j.is_object() && !j.empty(), c, "{}: expected an object mapping tokens to ids", where);
  std::vector<std::string> vocab;
  for (auto it = j.begin(); it != j.end(); ++it) {
    PEFT_CHECK(it.value().is_number_integer() && it.value().get<int64_t>() >= 0, c,
               "{}: the id of token '{}' must be a non-negative integer, found {}", where, it.key(), it.value().dump());
    const auto id = it.value().get<size_t>();
    PEFT_CHECK(id < 10'000'000, c, "{}: id {} of token '{}' is implausibly large", where, id, it.key());
    if (vocab.size() <= id) vocab.resize(id + 1);
    PEFT_CHECK(vocab[id].empty(), c, "{}: id {} is used by both '{}' and '{}'", where, id, vocab[id], it.key());
    vocab[id] = it.key();
  }
  return vocab;
}

BpeModel::BpeModel(std::vector<std::string> vocab) : vocab_(std::move(vocab)) {
  ids_.reserve(vocab_.size());
  for (size_t i = 0; i < vocab_.size(); ++i)
    if (!vocab_[i].empty()) ids_.emplace(vocab_[i], static_cast<int64_t>(i));
}

std::optional<int64_t> BpeModel::id(const std::string& token) const {
  auto it = ids_.find(token);
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

bool BpeModel::add_merge(const std::string& a, const std::string& b, int32_t rank) {
  auto ia = id(a), ib = id(b), ir = id(a + b);
  if (!ia || !ib || !ir) return false;
  merges_.emplace(key(*ia, *ib), Merge{rank, *ir});  // the first (lowest) rank of a pair wins
  return true;
}

std::vector<int64_t> BpeModel::merge(std::vector<int64_t> symbols) const {
  const int n = static_cast<int>(symbols.size());
  if (n < 2) return symbols;
  // A doubly linked list over the symbols; merged-away entries are marked dead.
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    int64_t left, right;  // the pair as it was when queued (stale entries are skipped)
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push = [&](int pos) {
    if (pos < 0 || next[pos] >= n) return;
    auto it = merges_.find(key(symbols[pos], symbols[next[pos]]));
    if (it != merges_.end()) queue.push({it->second.rank, pos, symbols[pos], symbols[next[pos]]});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const int pos = top.pos;
    if (!alive[pos] || next[pos] >= n) continue;
    const int right = next[pos];
    if (symbols[pos] != top.left || symbols[right] != top.right) continue;  // stale
    symbols[pos] = merges_.at(key(top.left, top.right)).result;
    alive[right] = false;
    next[pos] = next[right];
    if (next[pos] < n) prev[next[pos]] = pos;
    push(prev[pos]);
    push(pos);
  }
  std::vector<int64_t> out;
  out.reserve(n);
  for (int i = 0; i < n; i = next[i]) out.push_back(symbols[i]);
  return out;
}

}  // namespace peft::tokenizers
