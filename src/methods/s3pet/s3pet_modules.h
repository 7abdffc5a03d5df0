// S3PET's modules: the gated candidates of the search space (a LoRA / added-bias delta per
// projection, a low-rank adapter per sublayer, LN-tuning) and the controller that owns the
// architecture logits, samples the gates for every forward and installs the LN deltas.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>

#include "peft/methods/s3pet/s3pet.h"
#include "peft/nn/block_adapters.h"
#include "peft/nn/linear_delta.h"
#include "peft/nn/side_network.h"

namespace peft::methods {

/// The gates of one forward, written by the controller and read by every candidate.
struct GateBank {
  at::Tensor z;  ///< [candidates]
  at::Tensor gate(int64_t index) const;
};

/// LoRA (rank r, scale α/r) and / or an added bias on one projection; gated while searching.
class S3petLinearDelta : public nn::LinearDelta {
 public:
  S3petLinearDelta(int64_t in, int64_t out, bool layer_has_bias, std::shared_ptr<GateBank> bank,
                   at::TensorOptions options);
  void add_lora(int64_t rank, double alpha, int64_t gate);
  void add_bias(int64_t gate);
  at::Tensor adapt_output(const at::Tensor& x, const at::Tensor& y) override;
  bool mergeable() const override;
  void merge_into(at::Tensor& weight_out_in, at::Tensor& bias) override;
  void unmerge_from(at::Tensor& weight_out_in, at::Tensor& bias) override;

 private:
  int64_t in_, out_;
  bool layer_has_bias_;
  std::shared_ptr<GateBank> bank_;
  at::TensorOptions options_;
  at::Tensor lora_A, lora_B, bias_delta;
  double scale_ = 0;
  int64_t lora_gate_ = -1, bias_gate_ = -1;
};

/// A bottleneck adapter on a sublayer's output: out + g · up(relu(down(out))), up zero-initialized.
class S3petAdapter : public nn::SublayerAdapter {
 public:
  S3petAdapter(int64_t hidden, int64_t size, std::shared_ptr<GateBank> bank, int64_t gate, at::TensorOptions options);
  at::Tensor forward(const at::Tensor& input, const at::Tensor& output) override;

 private:
  torch::nn::Linear down{nullptr}, up{nullptr};
  std::shared_ptr<GateBank> bank_;
  int64_t gate_;
};

/// A norm whose affine parameters the controller replaces for one forward.
struct NormSlot {
  std::shared_ptr<torch::nn::Module> module;  ///< LayerNorm or RMSNorm
  at::Tensor* weight_member = nullptr;
  at::Tensor* bias_member = nullptr;          ///< null for RMSNorm
  at::Tensor weight, bias;                    ///< the frozen originals
  int64_t gate = -1;
};

class S3petController : public nn::SideNetwork {
 public:
  S3petController(std::vector<S3petCandidate> candidates, std::vector<NormSlot> norms, const S3petConfig& config,
                  int64_t budget, std::shared_ptr<GateBank> bank, at::TensorOptions options);
  ~S3petController() override;
  models::ModelInputs prepare(const models::ModelInputs& inputs) override;
  std::string checkpointing_conflict() const override {
    return "s3pet: the structure search feeds gates and norm weights computed outside the blocks into them; "
           "search without gradient checkpointing (the retrain of the found structure may use it)";
  }
  /// p_i = σ((α_i − b)/β) with Σ p_i n_i = B, carrying the configured gradient.
  at::Tensor probabilities();
  const std::vector<S3petCandidate>& candidates() const { return candidates_; }
  /// The gates of the latest forward.
  const at::Tensor& gates() const { return bank_->z; }
  at::Tensor arch_logits;

 private:
  void restore_norms();
  std::vector<S3petCandidate> candidates_;
  std::vector<NormSlot> norms_;
  torch::nn::ModuleList norm_deltas{nullptr};
  at::Tensor counts_;  // n_i, double
  double budget_, beta_;
  bool implicit_;
  std::shared_ptr<GateBank> bank_;
};

/// Solves Σ σ((α_i − b)/β) n_i = B for b (bisection; exact to double precision).
double solve_shift(const at::Tensor& alpha, const at::Tensor& counts, double budget, double beta);

}  // namespace peft::methods
