// Data-parallel training on PyTorch's c10d: every rank holds the frozen base and the delta, reads
// its slice of each global batch, and only the delta's gradients are averaged (Gloo on CPU, NCCL
// on CUDA where LibTorch has it). Rendezvous through c10d's TCPStore from torchrun's environment,
// so `torchrun ... peft-train ...` works unchanged. A C++ app with its own loop uses the same
// DistributedContext.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace peft::train {

struct DistributedOptions {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  ///< the rank on this machine (its CUDA device index)
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string backend = "auto";  ///< gloo | nccl | auto (nccl for CUDA devices, else gloo)
  /// Rendezvous and every collective wait at most this long; then the error names the ranks that
  /// did not arrive.
  double timeout_s = 300;
};

/// torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; PEFT_DIST_BACKEND
/// and PEFT_DIST_TIMEOUT optionally); nullopt when WORLD_SIZE is unset. Malformed values are errors
/// naming the variable.
std::optional<DistributedOptions> distributed_options_from_env();

class DistributedContext {
 public:
  /// Joins the process group (blocks until every rank has, at most timeout_s).
  DistributedContext(const DistributedOptions& options, c10::Device device);
  ~DistributedContext();
  DistributedContext(const DistributedContext&) = delete;
  DistributedContext& operator=(const DistributedContext&) = delete;

  int rank() const;
  int world_size() const;
  bool is_main() const { return rank() == 0; }
  const std::string& backend() const;

  /// Averages the gradients of `params` over the ranks, packed into flat buckets of up to
  /// `bucket_bytes` (one all-reduce each). A tensor without a gradient takes part as zeros when
  /// another rank has one, and stays without one when no rank has.
  /// With `agree_on_presence` false the caller has agreed already (one collective fewer): every
  /// tensor takes part, as zeros where it has no gradient.
  void average_gradients(const std::vector<at::Tensor>& params, int64_t bucket_bytes = 25 << 20,
                         bool agree_on_presence = true);
  /// Sums each tensor over the ranks, in place.
  void all_reduce_sum(std::vector<at::Tensor>& tensors);
  /// Rank 0's values into every rank's tensors, in place.
  void broadcast(std::vector<at::Tensor>& tensors);
  void barrier();
  /// Seconds spent in collectives so far (for the all-reduce's share of a step).
  double communication_seconds() const;

 private:
  void average_present_gradients(const std::vector<at::Tensor>& params, int64_t bucket_bytes, double scale);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace peft::train
