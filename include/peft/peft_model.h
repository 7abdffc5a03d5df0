// PeftModel: a frozen backbone plus named adapters. Add / activate / disable / delete adapters,
// report trainable parameters, merge / unmerge / merge_and_unload.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/ScalarType.h>

#include "peft/methods/method.h"
#include "peft/models/model.h"
#include "peft/nn/adaptable_linear.h"

namespace peft {
namespace data {
class BatchSource;
}
namespace nn {
class PromptEncoder;
class SideNetwork;
}  // namespace nn

struct ParameterCounts {
  int64_t trainable = 0;
  int64_t total = 0;
};

/// The precision of what trains and what is saved, independent of the frozen base's dtype.
struct DeltaPrecision {
  /// The dtype of a new adapter's tensors. Unset: tensors the base made bfloat16 / float16 become
  /// float32 (HF PEFT's autocast_adapter_dtype), others keep the base's dtype. Trainable copies
  /// of base tensors (modules_to_save, trained biases and norms) always keep the base's dtype.
  std::optional<c10::ScalarType> delta_dtype;
  /// The dtype of a saved delta's floating tensors. Unset: bfloat16 / float16 are saved as
  /// float32 (exactly), others as they are. Loading casts to the live tensors' dtype.
  std::optional<c10::ScalarType> save_dtype;
};

class PeftModel {
 public:
  /// Takes the backbone and freezes every one of its parameters.
  explicit PeftModel(std::shared_ptr<models::PretrainedModel> base);

  models::ModelOutput forward(const models::ModelInputs& inputs);
  /// The row name that runs no adapter in a mixed-adapter batch (HF PEFT's).
  static constexpr const char* kBaseAdapterName = "__base__";
  /// A mixed-adapter batch (HF PEFT's `adapter_names`): row i runs adapter adapter_names[i] alone,
  /// or the bare base for kBaseAdapterName, whatever is active. Rows are grouped by adapter and
  /// each group's modules run once on its rows. Inference only (eval mode). Supported: linear
  /// deltas, block and attention adapters, trained copies of projection and norm weights / biases
  /// (modules_to_save heads, BitFit, trained LayerNorms); prompt methods when every row runs one with the same
  /// placement and number of virtual tokens. Side networks (LST) and copies of other base tensors
  /// are refused by name. All rows on one adapter: exactly the forward with it active.
  models::ModelOutput forward(const models::ModelInputs& inputs, const std::vector<std::string>& adapter_names);
  /// forward, plus — in training mode, with labels — the active method's own training-loss
  /// terms (AdaMix's consistency loss): the loss an optimizer step should minimise.
  models::ModelOutput forward_train(const models::ModelInputs& inputs);
  models::PretrainedModel& base_model() { return *base_; }
  std::shared_ptr<models::PretrainedModel> base_model_ptr() { return base_; }
  void train(bool on = true) { base_->train(on); }
  void eval() { base_->eval(); }
  /// Activation checkpointing of the backbone's blocks (see PretrainedModel::set_gradient_checkpointing).
  void set_gradient_checkpointing(bool on) { base_->set_gradient_checkpointing(on); }

  /// Applies to adapters added afterwards (delta_dtype) and to every later save (save_dtype).
  void set_precision(const DeltaPrecision& precision) { precision_ = precision; }
  const DeltaPrecision& precision() const { return precision_; }

  // ---- adapters ----
  /// Attaches a freshly initialized adapter; the first one added becomes active. A config whose
  /// initialisation reads training data (SparseAdapter's snip / grasp scores, LST's Fisher side
  /// init) is refused by name: give it batches with the overload below. S3PET without a structure
  /// attaches its gated search space here (what its search trains).
  void add_adapter(const std::string& name, const methods::MethodConfig& config);
  /// Attaches an adapter through its method's whole lifecycle: a plan from `batches` first where
  /// the method has one (S3PET without a structure: the search; the adapter then holds the found
  /// structure, see adapter_config), then the data-dependent initialisation. What peft-train does.
  void add_adapter(const std::string& name, const methods::MethodConfig& config, const data::BatchSource& batches);
  /// Attaches with only the data-free part of the initialisation: for tensors about to be loaded
  /// (load_adapter, a resumed training state) or for prepare_adapter() later.
  void add_adapter_without_data(const std::string& name, const methods::MethodConfig& config);
  /// Adds `new_name`, an ordinary adapter combining `sources` with `weights` as HF PEFT's
  /// add_weighted_adapter does (see methods::WeightedCombination; LoRA deltas). Nothing is added
  /// when it fails.
  void add_weighted_adapter(const std::vector<std::string>& sources, const std::vector<double>& weights,
                            const std::string& new_name, const methods::WeightedCombination& how = {});
  /// Runs the data-dependent initialisation of an attached adapter (nothing for most methods).
  void prepare_adapter(const std::string& name, const data::BatchSource& batches);
  void delete_adapter(const std::string& name);
  void set_adapter(const std::string& name);
  /// Several adapters active at once (HF PEFT's set_adapter([a, b])): each runs (in the order the
  /// adapters were added) and trains; merge_adapter merges them all. With more than one, prompt methods and side
  /// networks are refused, and no two may train a copy of the same base tensor.
  void set_adapters(const std::vector<std::string>& names);
  /// The first active adapter ("" when there is none).
  const std::string& active_adapter() const { return active_; }
  /// Every active adapter (set_adapters' list; one after set_adapter).
  const std::vector<std::string>& active_adapters() const { return active_set_; }
  std::vector<std::string> adapters() const;
  bool has_adapter(const std::string& name) const { return adapters_.count(name) != 0; }
  const methods::MethodConfig& adapter_config(const std::string& name) const;
  /// Runs the bare base model until enable_adapters().
  void disable_adapters();
  void enable_adapters();
  bool adapters_enabled() const { return enabled_; }
  /// Whether the adapter's parameters take gradients when it is active (default: true).
  void set_trainable(const std::string& name, bool trainable);

  // ---- merging ----
  /// Folds the active adapters into the base weights (their deltas stop running). Quantized layers
  /// refuse unless `requantize` (dequantize → add → quantize again, lossy); the error that adds
  /// is returned (zero layers when nothing was quantized).
  nn::RequantizationError merge_adapter(bool requantize = false);
  /// Undoes merge_adapter (requantizing again where it requantized).
  nn::RequantizationError unmerge_adapter();
  bool merged() const { return !merged_.empty(); }
  /// Merges the active adapter for good, removes every adapter and returns the plain backbone
  /// (`requantize`: as merge_adapter; `error`, when given, receives what requantizing added).
  std::shared_ptr<models::PretrainedModel> merge_and_unload(bool requantize = false,
                                                             nn::RequantizationError* error = nullptr);
  /// Removes every adapter without merging and returns the plain backbone.
  std::shared_ptr<models::PretrainedModel> unload();

  // ---- parameters ----
  /// The active adapters' trainable tensors (what an optimizer should get).
  std::vector<at::Tensor> trainable_parameters();
  /// An adapter's tensors under Hugging Face PEFT's checkpoint keys ("base_model.model.<path>.lora_A.weight";
  /// a prompt method's: "prompt_embeddings", and "base_model.<path>" for its trained head copies).
  std::map<std::string, at::Tensor> adapter_state_dict(const std::string& name);
  /// A trainable tensor's role for weight decay: what its adapter's method says ("scale", "gate",
  /// "prompt"), else optim::default_parameter_role ("bias", "norm", "weight").
  std::string parameter_role(const std::string& name, const at::Tensor& tensor) const;
  /// Every buffer the adapters added to the backbone (SparseAdapter's masks, any method state
  /// kept outside parameters), by full name: what a training state must keep beside the weights.
  std::vector<std::pair<std::string, at::Tensor>> adapter_buffers();
  ParameterCounts count_parameters();
  /// "trainable params: 1,234 || all params: 5,678 || trainable%: 21.7316" (HF's format, 4 decimals).
  std::string trainable_parameters_report();
  /// The fingerprint of the base weights as loaded (see core/fingerprint.h).
  const std::string& base_fingerprint() const { return fingerprint_; }
  const std::vector<std::string>& base_parameter_names() const { return base_names_; }
  /// The base's parameter count; a quantized weight counts the weights its codes stand for.
  int64_t base_parameter_count() const;

  // ---- for method implementations ----
  /// Every AdaptableLinear of the backbone, by full module name.
  const std::vector<std::pair<std::string, nn::AdaptableLinear>>& linears() const { return linears_; }
  void attach_linear_delta(const std::string& adapter, const std::string& module_name,
                           std::shared_ptr<nn::LinearDelta> delta);
  /// Every block's adapter slots (block-slot extension point), by block module name.
  const std::vector<std::pair<std::string, nn::BlockAdapters>>& blocks() const { return blocks_; }
  /// Puts a sublayer adapter into slot "attention" or "ffn" of one block.
  void attach_block_adapter(const std::string& adapter, const std::string& block_name, const std::string& slot,
                            std::shared_ptr<nn::SublayerAdapter> module);
  /// Every attention layer's extension point, by attention module name ("model.layers.0.self_attn").
  const std::vector<std::pair<std::string, nn::AttentionAdapters>>& attention_layers() const { return attentions_; }
  /// Attaches an attention adapter; its tensors are saved as "<attention module>.<name>" (HF's
  /// adaption-prompt keys).
  void attach_attention_adapter(const std::string& adapter, const std::string& attention_name,
                                std::shared_ptr<nn::AttentionAdapter> module);
  /// Gives `adapter` a prompt (prompt / prefix / P-tuning): it rewrites every batch before the
  /// backbone sees it and is saved as the one tensor "prompt_embeddings".
  void attach_prompt_encoder(const std::string& adapter, std::shared_ptr<nn::PromptEncoder> encoder);
  /// The adapter's prompt encoder, or nullptr.
  std::shared_ptr<nn::PromptEncoder> prompt_encoder(const std::string& adapter);
  /// Gives `adapter` a side network (registered in the backbone as "side_network.<adapter>");
  /// its tensors are saved as "side_network.<path>".
  void attach_side_network(const std::string& adapter, std::shared_ptr<nn::SideNetwork> network);
  /// The adapter's side network, or nullptr.
  std::shared_ptr<nn::SideNetwork> side_network(const std::string& adapter);
  /// Gives `adapter` its own trainable copy of a base parameter (modules_to_save, trainable biases).
  /// `saved_as`: the parameter path its checkpoint key uses instead of `param_name` (HF PEFT keys
  /// the bias of a layer it wraps as "<layer>.base_layer.bias"); loading accepts both spellings.
  void add_trainable_base_tensor(const std::string& adapter, const std::string& param_name,
                                 const std::string& saved_as = "");
  /// The other spelling a delta file may use for one of `adapter`'s checkpoint keys (see
  /// add_trainable_base_tensor's saved_as), or "" when there is none.
  std::string checkpoint_key_alias(const std::string& adapter, const std::string& key) const;
  /// modules_to_save: every base parameter inside a named module; an unmatched name is an error.
  void add_modules_to_save(const std::string& adapter, const std::vector<std::string>& modules);
  /// The head modules a task_type trains and saves implicitly, as HF PEFT does: SEQ_CLS and
  /// TOKEN_CLS add "classifier" and "score" (those this model has). Methods leave them alone.
  std::vector<std::string> implicit_modules_to_save(const methods::MethodConfig& config) const;

 private:
  struct Adapter {
    std::shared_ptr<methods::MethodConfig> config;
    std::vector<std::pair<std::string, nn::AdaptableLinear>> layers;
    std::vector<std::pair<std::string, nn::BlockAdapters>> blocks;  // blocks holding this adapter's slot modules
    std::vector<std::pair<std::string, nn::AttentionAdapters>> attentions;  // attention layers holding its modules
    std::shared_ptr<nn::PromptEncoder> prompt;
    std::shared_ptr<nn::SideNetwork> side;
    std::map<std::string, at::Tensor> base_copies;  // param name -> this adapter's values
    std::map<std::string, std::string> saved_as;     // param name -> the path its checkpoint key uses
    bool trainable = true;
  };
  Adapter& adapter(const std::string& name);
  const Adapter& adapter(const std::string& name) const;
  /// Makes `names` the active adapters (active_ is the first) without applying the state.
  void activate(std::vector<std::string> names);
  bool is_active(const std::string& name) const;
  /// Restores the active set and enabled flag (and clears row groups) when a forward ends.
  struct ScopedState;
  /// Routes every extension point by row groups (empty: no routing).
  void set_row_groups(const std::map<std::string, at::Tensor>& rows_by_adapter);
  /// The batch with every row's prompt in place (mixed prompt-method batches, before the cache holds them).
  models::ModelInputs prepare_mixed_prompts(const models::ModelInputs& inputs,
                                            const std::map<std::string, at::Tensor>& rows_by_adapter);
  /// Makes the model compute with the active adapter (or none) and sets requires_grad accordingly.
  void apply_state();
  at::Tensor base_param(const std::string& name);
  /// Gives a newly attached adapter's modules the delta dtype (see DeltaPrecision).
  void cast_new_adapter(const std::string& name);
  /// Detaches every module of the adapter from the model (no merge).
  void detach_modules(const std::string& name, Adapter& a);

  std::shared_ptr<models::PretrainedModel> base_;
  std::vector<std::pair<std::string, nn::AdaptableLinear>> linears_;
  std::vector<std::pair<std::string, nn::BlockAdapters>> blocks_;
  std::vector<std::pair<std::string, nn::AttentionAdapters>> attentions_;
  // Every backbone module whose weight / bias a copy may replace per row (projections, norms).
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> routables_;
  std::shared_ptr<torch::nn::Module> prompt_holder_;  // registered in the base as "prompt_encoder" on first use
  std::shared_ptr<torch::nn::Module> side_holder_;    // registered in the base as "side_network" on first use
  std::vector<std::string> base_names_;
  std::set<std::string> base_buffer_names_;  // the backbone's own buffers, collected once
  std::map<std::string, at::Tensor> base_params_;  // name -> the live parameter, collected once
  std::map<std::string, Adapter> adapters_;
  std::vector<std::string> order_;  // adapters in insertion order
  std::map<std::string, at::Tensor> originals_;  // base param name -> base values while a copy is installed
  std::string active_;                   // the first of active_set_
  std::vector<std::string> active_set_;  // every active adapter, in the order they run
  bool enabled_ = true;
  std::vector<std::string> merged_;
  bool merged_requantized_ = false;
  std::string fingerprint_;
  DeltaPrecision precision_;
};

}  // namespace peft
