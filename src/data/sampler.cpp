#include <numeric>

#include "peft/core/error.h"
#include "peft/data/dataset.h"

namespace peft::data {
namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
}  // namespace

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  uint64_t state = seed;
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(i + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

Sampler::Sampler(int64_t size, uint64_t seed, bool shuffle) : size_(size), seed_(seed), shuffle_(shuffle) {
  PEFT_CHECK(size > 0, "data", "the dataset is empty");
  build_order();
}

void Sampler::build_order() {
  if (shuffle_) {
    order_ = permutation(size_, seed_ * 1000003ULL + static_cast<uint64_t>(state_.epoch));
  } else {
    order_.resize(static_cast<size_t>(size_));
    std::iota(order_.begin(), order_.end(), 0);
  }
}

std::vector<int64_t> Sampler::next(int64_t batch_size) {
  PEFT_CHECK(batch_size > 0, "data", "batch size must be positive, found {}", batch_size);
  if (state_.cursor >= size_) {
    ++state_.epoch;
    state_.cursor = 0;
    build_order();
  }
  const int64_t end = std::min(size_, state_.cursor + batch_size);
  std::vector<int64_t> out(order_.begin() + state_.cursor, order_.begin() + end);
  state_.cursor = end;
  return out;
}

void Sampler::restore(const State& s) {
  PEFT_CHECK(s.epoch >= 0 && s.cursor >= 0 && s.cursor <= size_, "data",
             "sampler state (epoch {}, cursor {}) does not fit a dataset of {} examples", s.epoch, s.cursor, size_);
  state_ = s;
  build_order();
}

}  // namespace peft::data
