// Training batches for the methods that initialise from data (SNIP / GraSP scores, Fisher
// importance, S3PET's structure search). The same source gives the same batches in every
// process, so an application and peft-train build the same adapter from the same seed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include <c10/core/Device.h>

#include "peft/data/dataset.h"
#include "peft/models/io.h"

namespace peft::data {

/// An endless stream of batches.
using BatchStream = std::function<models::ModelInputs()>;

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  /// The first `count` batches in a fixed order (fewer when the data is smaller).
  virtual std::vector<models::ModelInputs> first(int64_t count) const = 0;
  /// Two endless, shuffled streams over disjoint parts of the data: the second holds about
  /// `held_fraction` of it (at least one unit, and at least one is left to the first). `seed`
  /// fixes the split and both orders.
  virtual std::pair<BatchStream, BatchStream> split(double held_fraction, uint64_t seed) const = 0;
};

/// Batches of a dataset: `batch_size` examples each, moved to `device`. first() reads the
/// examples in order; split() divides the examples.
class DatasetBatches : public BatchSource {
 public:
  DatasetBatches(std::shared_ptr<const Dataset> dataset, int64_t batch_size, c10::Device device = c10::Device(c10::kCPU));
  std::vector<models::ModelInputs> first(int64_t count) const override;
  std::pair<BatchStream, BatchStream> split(double held_fraction, uint64_t seed) const override;

 private:
  std::shared_ptr<const Dataset> dataset_;
  int64_t batch_size_;
  c10::Device device_;
};

/// Batches given up front (an application's own, or a test's). split() divides the batches.
class FixedBatches : public BatchSource {
 public:
  explicit FixedBatches(std::vector<models::ModelInputs> batches);
  std::vector<models::ModelInputs> first(int64_t count) const override;
  std::pair<BatchStream, BatchStream> split(double held_fraction, uint64_t seed) const override;

 private:
  std::shared_ptr<const std::vector<models::ModelInputs>> batches_;
};

/// Moves every defined input tensor to `device`.
models::ModelInputs to_device(models::ModelInputs inputs, c10::Device device);

}  // namespace peft::data
