// Datasets addressable by index, and the deterministic sampler that orders them. A dataset
// keeps little in memory (file offsets, labels) and builds model inputs per batch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "peft/models/model.h"

namespace peft::data {

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  /// Collates examples into model inputs (padding, attention masks, labels).
  virtual models::ModelInputs batch(const std::vector<int64_t>& indices) const = 0;
  /// Label names for classification sets (index = class id); empty otherwise.
  virtual std::vector<std::string> labels() const { return {}; }
  /// A human-readable summary of what was read: counts, truncations, skipped records.
  virtual std::string describe() const = 0;
};

/// Deterministic order: epoch e visits a permutation drawn from (seed, e); resumable from
/// (epoch, cursor). Batches never straddle epochs (the last one of an epoch may be smaller).
class Sampler {
 public:
  struct State {
    int64_t epoch = 0;
    int64_t cursor = 0;
  };
  Sampler(int64_t size, uint64_t seed, bool shuffle);
  std::vector<int64_t> next(int64_t batch_size);
  const State& state() const { return state_; }
  void restore(const State& s);

 private:
  void build_order();
  int64_t size_;
  uint64_t seed_;
  bool shuffle_;
  State state_;
  std::vector<int64_t> order_;
};

/// A permutation of 0..n-1 from a seed, identical on every platform (own Fisher-Yates over
/// splitmix64; the standard library's shuffles differ between implementations).
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

}  // namespace peft::data
