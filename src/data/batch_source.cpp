#include "peft/data/batch_source.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::data {
namespace {
/// Units 0..n-1 in a seeded order, cut into (kept, held out): the held-out part gets about
/// `fraction` of them, at least 1, at most n - 1.
std::pair<std::vector<int64_t>, std::vector<int64_t>> split_units(int64_t n, double fraction, uint64_t seed,
                                                                  const char* unit) {
  PEFT_CHECK(n >= 2, "data", "splitting the training data needs at least 2 {}, found {}", unit, n);
  PEFT_CHECK(fraction > 0.0 && fraction < 1.0, "data", "the held-out fraction must be in (0, 1), found {}", fraction);
  const int64_t held = std::clamp<int64_t>(std::llround(fraction * static_cast<double>(n)), 1, n - 1);
  const auto order = permutation(n, seed);
  return {{order.begin() + held, order.end()}, {order.begin(), order.begin() + held}};
}

/// An endless stream over `subset` in a seeded shuffled order: each draw takes `per_draw` of its
/// units and makes a batch of them.
BatchStream shuffled(std::vector<int64_t> subset, uint64_t seed, int64_t per_draw,
                     std::function<models::ModelInputs(const std::vector<int64_t>&)> make) {
  auto sampler = std::make_shared<Sampler>(static_cast<int64_t>(subset.size()), seed, true);
  auto units = std::make_shared<std::vector<int64_t>>(std::move(subset));
  return [sampler, units, per_draw, make = std::move(make)] {
    std::vector<int64_t> pick;
    for (int64_t i : sampler->next(per_draw)) pick.push_back((*units)[static_cast<size_t>(i)]);
    return make(pick);
  };
}
}  // namespace

models::ModelInputs to_device(models::ModelInputs in, c10::Device device) {
  if (device.is_cpu()) return in;
  for (at::Tensor* t : {&in.input_ids, &in.attention_mask, &in.token_type_ids, &in.position_ids, &in.pixel_values,
                        &in.labels})
    if (t->defined()) *t = t->to(device);
  return in;
}

DatasetBatches::DatasetBatches(std::shared_ptr<const Dataset> dataset, int64_t batch_size, c10::Device device)
    : dataset_(std::move(dataset)), batch_size_(batch_size), device_(device) {
  PEFT_CHECK(dataset_ != nullptr, "data", "DatasetBatches needs a dataset");
  PEFT_CHECK(batch_size_ > 0, "data", "batch_size must be positive, found {}", batch_size_);
}

std::vector<models::ModelInputs> DatasetBatches::first(int64_t count) const {
  std::vector<models::ModelInputs> out;
  const int64_t n = dataset_->size();
  for (int64_t start = 0; start < n && static_cast<int64_t>(out.size()) < count; start += batch_size_) {
    std::vector<int64_t> idx;
    for (int64_t i = start; i < std::min(n, start + batch_size_); ++i) idx.push_back(i);
    out.push_back(to_device(dataset_->batch(idx), device_));
  }
  return out;
}

std::pair<BatchStream, BatchStream> DatasetBatches::split(double held_fraction, uint64_t seed) const {
  auto [kept, held_out] = split_units(dataset_->size(), held_fraction, seed, "training examples");
  auto make = [dataset = dataset_, device = device_](const std::vector<int64_t>& examples) {
    return to_device(dataset->batch(examples), device);
  };
  return {shuffled(std::move(kept), seed + 1, batch_size_, make), shuffled(std::move(held_out), seed + 2, batch_size_, make)};
}

FixedBatches::FixedBatches(std::vector<models::ModelInputs> batches)
    : batches_(std::make_shared<const std::vector<models::ModelInputs>>(std::move(batches))) {
  PEFT_CHECK(!batches_->empty(), "data", "FixedBatches needs at least one batch");
}

std::vector<models::ModelInputs> FixedBatches::first(int64_t count) const {
  const auto n = static_cast<size_t>(std::clamp<int64_t>(count, 0, static_cast<int64_t>(batches_->size())));
  return {batches_->begin(), batches_->begin() + static_cast<std::ptrdiff_t>(n)};
}

std::pair<BatchStream, BatchStream> FixedBatches::split(double held_fraction, uint64_t seed) const {
  auto [kept, held_out] = split_units(static_cast<int64_t>(batches_->size()), held_fraction, seed, "batches");
  auto make = [batches = batches_](const std::vector<int64_t>& one) { return (*batches)[static_cast<size_t>(one.front())]; };
  return {shuffled(std::move(kept), seed + 1, 1, make), shuffled(std::move(held_out), seed + 2, 1, make)};
}

}  // namespace peft::data
