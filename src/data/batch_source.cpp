#include "peft/data/batch_source.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::data {
namespace {
/// How many of `n` units the held-out part gets: about `fraction`, at least 1, at most n - 1.
int64_t held_count(double fraction, int64_t n, const char* unit) {
  PEFT_CHECK(n >= 2, "data", "splitting the training data needs at least 2 {}, found {}", unit, n);
  PEFT_CHECK(fraction > 0.0 && fraction < 1.0, "data", "the held-out fraction must be in (0, 1), found {}", fraction);
  return std::clamp<int64_t>(std::llround(fraction * static_cast<double>(n)), 1, n - 1);
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

BatchStream DatasetBatches::stream(std::vector<int64_t> subset, uint64_t seed) const {
  auto sampler = std::make_shared<Sampler>(static_cast<int64_t>(subset.size()), seed, true);
  auto indices = std::make_shared<std::vector<int64_t>>(std::move(subset));
  auto dataset = dataset_;
  const int64_t batch = batch_size_;
  const c10::Device device = device_;
  return [dataset, sampler, indices, batch, device] {
    std::vector<int64_t> pick;
    for (int64_t i : sampler->next(batch)) pick.push_back((*indices)[static_cast<size_t>(i)]);
    return to_device(dataset->batch(pick), device);
  };
}

std::pair<BatchStream, BatchStream> DatasetBatches::split(double held_fraction, uint64_t seed) const {
  const int64_t n = dataset_->size();
  const int64_t held = held_count(held_fraction, n, "training examples");
  const auto order = permutation(n, seed);
  std::vector<int64_t> kept(order.begin() + held, order.end()), held_out(order.begin(), order.begin() + held);
  return {stream(std::move(kept), seed + 1), stream(std::move(held_out), seed + 2)};
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
  const auto n = static_cast<int64_t>(batches_->size());
  const int64_t held = held_count(held_fraction, n, "batches");
  const auto order = permutation(n, seed);
  auto make = [batches = batches_](std::vector<int64_t> subset, uint64_t s) -> BatchStream {
    auto sampler = std::make_shared<Sampler>(static_cast<int64_t>(subset.size()), s, true);
    auto indices = std::make_shared<std::vector<int64_t>>(std::move(subset));
    return [batches, sampler, indices] {
      return (*batches)[static_cast<size_t>((*indices)[static_cast<size_t>(sampler->next(1).front())])];
    };
  };
  return {make({order.begin() + held, order.end()}, seed + 1), make({order.begin(), order.begin() + held}, seed + 2)};
}

}  // namespace peft::data
