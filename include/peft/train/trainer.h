// The training loop: AdamW with a warm-up schedule, gradient accumulation and clipping,
// periodic evaluation (accuracy / macro-F1 / perplexity), best-checkpoint keeping, early
// stopping, JSONL logs, a progress line, exact resume, SIGINT handling and non-finite-loss
// protection. It trains whatever a Trainable exposes: a PeftModel's delta or a whole model.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "peft/data/batch_source.h"
#include "peft/data/dataset.h"
#include "peft/models/model.h"
#include "peft/privacy/dp_sgd.h"

namespace peft {
class PeftModel;
}

namespace peft::train {

class DistributedContext;

struct TrainerConfig {
  int64_t max_steps = 1000;
  int64_t batch_size = 16;
  int64_t grad_accum = 1;          ///< micro-batches per optimizer step
  double lr = 1e-3;
  double weight_decay = 0.01;      ///< not on the roles in no_decay
  /// Parameter roles exempt from weight decay (optim::parameter_roles(): weight, bias, norm, and
  /// the methods' scale, gate, prompt): by default all but ordinary weights, whose identity or
  /// zero values decay would pull away from (IA³ scales start at 1, gates at 0).
  std::vector<std::string> no_decay = {"bias", "norm", "scale", "gate", "prompt"};
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  std::string schedule = "linear"; ///< constant | linear | cosine
  int64_t warmup_steps = 0;
  double max_grad_norm = 1.0;      ///< 0 disables clipping
  int64_t eval_every = 0;          ///< 0: only at the end
  int64_t eval_batches = 0;        ///< 0: the whole eval set
  int64_t log_every = 10;
  int64_t save_every = 0;          ///< training-state checkpoints (0: only at the end / on SIGINT)
  std::string metric = "";         ///< accuracy | macro_f1 | loss (default: accuracy for classifiers, else loss)
  int64_t early_stopping_patience = 0;  ///< evaluations without improvement before stopping (0: never)
  int64_t max_nonfinite = 10;      ///< non-finite losses tolerated (each step is skipped) before aborting
  uint64_t seed = 42;
  std::string output_dir;          ///< logs, state/, best/ and final/ go here ("" = nothing written)
  /// A new (not resumed) run may replace an earlier run's outputs in output_dir (they are removed
  /// when it starts); otherwise finding them is an error.
  bool overwrite = false;
  bool progress = true;            ///< a progress line on stderr when it is a terminal
  /// Flush denormal floats to zero while training (core::flush_denormals; left on after): moment
  /// estimates of rarely updated rows otherwise decay into denormals and slow every step.
  bool flush_denormals = true;
  c10::Device device = c10::Device(c10::kCPU);
  /// Autocast of every forward: "no", "bf16" (CPU or CUDA) or "fp16" (CUDA). The base's storage
  /// dtype is the model's (LoadOptions::dtype); deltas keep theirs (DeltaPrecision).
  std::string mixed_precision = "no";
  /// "auto" (dynamic loss scaling with fp16, none otherwise), "dynamic" or "none". A step whose
  /// scaled gradients overflow is skipped and the scale halves (optim::GradScaler).
  std::string loss_scaling = "auto";
  double loss_scale_init = 65536.0;
  int64_t loss_scale_growth_interval = 2000;
  /// Data parallelism (see distributed.h): batch_size is the global batch, each rank takes its
  /// slice of it (batch_size must divide by the world size); the delta starts from rank 0's values,
  /// gradients are averaged before clipping, evaluation is sharded and reduced, and rank 0 alone
  /// writes output_dir. Unset: one process.
  std::shared_ptr<DistributedContext> distributed;
  /// DP-SGD on the trainable tensors (see privacy/dp_sgd.h): per-example gradients are clipped and
  /// noised, batches Poisson-sampled, ε reported in every evaluation line and written beside each
  /// saved delta (privacy.json). grad_accum must be 1; max_grad_norm above is not used.
  std::optional<privacy::DpSgdConfig> privacy;
};

/// What the trainer optimizes and how it is saved.
struct Trainable {
  std::function<models::ModelOutput(const models::ModelInputs&)> forward;
  /// The trainable tensors by stable name (the optimizer state is keyed by these names).
  std::function<std::vector<std::pair<std::string, at::Tensor>>()> parameters;
  /// Optional: a tensor's role for weight decay (default: optim::default_parameter_role).
  std::function<std::string(const std::string& name, const at::Tensor&)> role;
  /// Optional: state tensors that are not trained but belong to what trains (masks, method
  /// state), by stable name; the training state keeps them so that --resume restores them.
  std::function<std::vector<std::pair<std::string, at::Tensor>>()> buffers;
  /// Writes the deliverable to a directory (the delta, or the whole model).
  std::function<void(const std::string& dir)> save;
  std::function<void(bool training)> set_training;
};

/// The active adapter of a PeftModel: trained through forward_train (the method's loss terms
/// included), saved through checkpoint::export_adapter (the form it ships in).
Trainable trainable_delta(PeftModel& model);
/// Every parameter of a model (full fine-tuning or pretraining); saved as a Hugging Face model directory.
Trainable trainable_model(std::shared_ptr<models::PretrainedModel> model);

struct EvalResult {
  double loss = 0;
  double accuracy = -1;    ///< classifiers only
  double macro_f1 = -1;    ///< classifiers only
  double perplexity = -1;  ///< causal LMs only
  int64_t examples = 0;
  std::string to_json() const;
};

using data::to_device;

/// Mean loss and task metrics over a dataset (classifier if its labels() are non-empty). With
/// `distributed`, every rank calls it: each runs its share of the batches and the sums are reduced,
/// so every rank gets the single-process result.
EvalResult evaluate(const std::function<models::ModelOutput(const models::ModelInputs&)>& forward,
                    const data::Dataset& dataset, int64_t batch_size, int64_t max_batches, c10::Device device,
                    DistributedContext* distributed = nullptr);

struct TrainResult {
  int64_t steps = 0;
  bool interrupted = false;     ///< SIGINT: state saved, stopped early
  bool early_stopped = false;
  int64_t nonfinite_steps = 0;
  int64_t overflow_steps = 0;   ///< skipped by the loss scaler (inf / nan gradients)
  std::vector<double> losses;   ///< the loss of every optimizer step run in this call
  std::optional<EvalResult> last_eval, best_eval;
  std::optional<double> epsilon;  ///< DP-SGD: ε spent for the configured δ after the last step
  /// With a test set: its scores for the tensors of the best evaluation (step selected_step), or
  /// of the last step when nothing was evaluated.
  std::optional<EvalResult> test_eval;
  int64_t selected_step = 0;
};

/// Before a run writes anything: an output_dir holding an earlier run's outputs (state/, best/,
/// final/, log.jsonl) is an error naming them unless the run resumes, or `overwrite` is set —
/// then those outputs are removed. The Trainer checks again when a run starts.
void prepare_output_dir(const TrainerConfig& config, bool resuming);

class Trainer {
 public:
  /// `eval` selects: it is evaluated every eval_every steps and at the end, its best result's
  /// delta is saved to best/, and early stopping watches it. `test`, when given, is scored once
  /// when training ends, on the tensors best/ holds (which the live model then keeps, as Hugging
  /// Face's load_best_model_at_end does) — so the reported test score is of the delta chosen
  /// without looking at the test set.
  Trainer(Trainable target, TrainerConfig config, std::shared_ptr<const data::Dataset> train,
          std::shared_ptr<const data::Dataset> eval = nullptr, std::shared_ptr<const data::Dataset> test = nullptr);
  ~Trainer();
  /// Continues from a state directory written by save_state (output_dir/state by default).
  void resume(const std::string& state_dir);
  TrainResult train();
  void save_state(const std::string& dir) const;
  int64_t step() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace peft::train
