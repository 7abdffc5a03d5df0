#include "peft/peft_model.h"

#include "peft/nn/module_dtype.h"

#include <algorithm>
#include <regex>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/fingerprint.h"
#include "peft/models/quantize.h"
#include "peft/core/strings.h"
#include "peft/methods/prompt/prompt_learning.h"
#include "peft/nn/side_network.h"

namespace peft {
namespace {

constexpr const char* kC = "peft_model";
const std::string kKeyPrefix = "base_model.model.";
// HF PEFT's PeftModel holds a prompt method's base model directly, not through a tuner wrapper,
// so that method's trained copies of base modules (a classifier head) are keyed "base_model.<path>".
const std::string kPromptKeyPrefix = "base_model.";

void check_adapter_name(const std::string& name) {
  static const std::regex valid("[A-Za-z0-9_\\-]+");
  PEFT_CHECK(std::regex_match(name, valid), kC,
             "adapter name '{}' must be non-empty and use only letters, digits, '_' and '-'", name);
  PEFT_CHECK(name != "weight" && name != "bias", kC, "adapter name '{}' is reserved", name);
}

}  // namespace

PeftModel::PeftModel(std::shared_ptr<models::PretrainedModel> base) : base_(std::move(base)) {
  PEFT_CHECK(base_ != nullptr, kC, "expected a backbone, found nullptr");
  for (auto& p : base_->named_parameters(true)) {
    p.value().set_requires_grad(false);
    base_names_.push_back(p.key());
    base_params_[p.key()] = p.value();
  }
  for (const auto& b : base_->named_buffers(true)) base_buffer_names_.insert(b.key());
  for (auto& item : base_->adaptable_linears()) {
    PEFT_CHECK(item.second->adapters().empty(), kC, "layer '{}' already carries deltas; pass a bare backbone",
               item.first);
    linears_.push_back(item);
  }
  for (const auto& item : base_->named_modules("", false))
    if (dynamic_cast<nn::RowRoutable*>(item.value().get())) routables_.emplace_back(item.key(), item.value());
  blocks_ = base_->block_adapters();
  attentions_ = base_->attention_adapters();
  for (auto& [path, holder] : attentions_)
    PEFT_CHECK(holder->children().empty(), kC, "layer '{}' already carries adapters; pass a bare backbone", path);
  for (auto& [path, holder] : blocks_)
    PEFT_CHECK(holder->children().empty(), kC, "block '{}' already carries adapters; pass a bare backbone", path);
  for (const auto& child : base_->named_children()) {
    if (child.key() == "prompt_encoder") prompt_holder_ = child.value();
    if (child.key() == "side_network") side_holder_ = child.value();
    PEFT_CHECK(!(child.key() == "prompt_encoder" || child.key() == "side_network") || child.value()->children().empty(),
               kC, "the backbone already carries a {} of another PeftModel; pass a bare backbone", child.key());
  }
  std::map<std::string, core::TensorIdentity> identity;
  for (const auto& [name, t] : base_params_) identity[name] = core::tensor_identity(t);
  for (const auto& [path, lin] : linears_)  // a quantized base fingerprints as the one it was quantized from
    if (lin->quantized()) identity[path + ".weight"] = lin->original_weight_identity();
  for (const auto& name : base_->newly_initialized()) identity.erase(name);
  fingerprint_ = core::fingerprint(identity);
}

models::ModelOutput PeftModel::forward(const models::ModelInputs& inputs) {
  if (enabled_ && active_set_.size() == 1) {
    auto& a = adapter(active_);
    if (a.prompt) return base_->forward(a.prompt->prepare(inputs));
    if (a.side) {
      if (base_->gradient_checkpointing() && base_->is_training() && a.trainable) {
        const std::string conflict = a.side->checkpointing_conflict();
        PEFT_CHECK(conflict.empty(), kC, "adapter '{}': {}", active_, conflict);
      }
      return base_->forward(a.side->prepare(inputs));
    }
  }
  return base_->forward(inputs);
}

PeftModel::Adapter& PeftModel::adapter(const std::string& name) {
  auto it = adapters_.find(name);
  PEFT_CHECK(it != adapters_.end(), kC, "no adapter named '{}' (adapters: {})", name, fmt::join(order_, ", "));
  return it->second;
}

const PeftModel::Adapter& PeftModel::adapter(const std::string& name) const {
  return const_cast<PeftModel*>(this)->adapter(name);
}

at::Tensor PeftModel::base_param(const std::string& name) {
  auto it = base_params_.find(name);
  PEFT_CHECK(it != base_params_.end(), kC, "the base model has no parameter '{}'", name);
  return it->second;
}

std::vector<std::string> PeftModel::adapters() const { return order_; }

const methods::MethodConfig& PeftModel::adapter_config(const std::string& name) const { return *adapter(name).config; }

void PeftModel::add_adapter_without_data(const std::string& name, const methods::MethodConfig& config) {
  check_adapter_name(name);
  PEFT_CHECK(!has_adapter(name), kC, "adapter '{}' already exists; delete it first or pick another name", name);
  PEFT_CHECK(merged_.empty(), kC, "adapter '{}' is merged; unmerge it before adding adapters", active_);
  config.validate();
  const auto& method = methods::find_method(config.method());
  adapters_[name].config = config.clone();
  order_.push_back(name);
  try {
    method.attach(*this, *adapters_[name].config, name);
  } catch (...) {
    detach_modules(name, adapters_[name]);
    adapters_.erase(name);
    order_.pop_back();
    throw;
  }
  try {
    cast_new_adapter(name);
    add_modules_to_save(name, implicit_modules_to_save(config));
  } catch (...) {
    delete_adapter(name);
    throw;
  }
  if (active_.empty()) activate({name});
  base_->train(base_->is_training());  // new modules take the model's train / eval mode
  apply_state();
}

void PeftModel::cast_new_adapter(const std::string& name) {
  auto& a = adapter(name);
  auto cast = [&](torch::nn::Module& m) {
    std::optional<c10::ScalarType> to = precision_.delta_dtype;
    auto half = [](const at::Tensor& t) { return nn::is_half_precision(t.scalar_type()); };
    for (const auto& t : m.parameters()) to = to ? to : (half(t) ? std::optional(c10::kFloat) : std::nullopt);
    for (const auto& t : m.buffers()) to = to ? to : (half(t) ? std::optional(c10::kFloat) : std::nullopt);
    if (to) nn::to_floating_dtype(m, *to);
  };
  for (auto& [path, lin] : a.layers) cast(*lin->delta(name));
  for (auto& [path, block] : a.blocks)
    for (auto& m : block->modules_of(name)) cast(*m);
  for (auto& [path, holder] : a.attentions)
    for (auto& m : holder->modules_of(name)) cast(*m);
  if (a.prompt) cast(*a.prompt);
  if (a.side) cast(*a.side);
}

std::vector<std::string> PeftModel::implicit_modules_to_save(const methods::MethodConfig& config) const {
  const auto& task = config.common.task_type;
  if (task != "SEQ_CLS" && task != "TOKEN_CLS") return {};
  std::vector<std::string> out;
  for (const std::string head : {"classifier", "score"})
    for (const auto& p : base_names_)
      if (core::is_under(p, head)) {
        out.push_back(head);
        break;
      }
  return out;
}

void PeftModel::attach_linear_delta(const std::string& adapter_name, const std::string& module_name,
                                    std::shared_ptr<nn::LinearDelta> delta) {
  auto& a = adapter(adapter_name);
  for (auto& [path, lin] : linears_) {
    if (path != module_name) continue;
    lin->add_delta(adapter_name, std::move(delta));
    a.layers.emplace_back(path, lin);
    return;
  }
  fail(kC, fmt::format("no adaptable layer named '{}'", module_name));
}

void PeftModel::attach_block_adapter(const std::string& adapter_name, const std::string& block_name,
                                     const std::string& slot, std::shared_ptr<nn::SublayerAdapter> module) {
  auto& a = adapter(adapter_name);
  for (auto& [path, block] : blocks_) {
    if (path != block_name) continue;
    block->add(adapter_name, slot, std::move(module));
    const bool known = std::any_of(a.blocks.begin(), a.blocks.end(), [&block_name](const auto& b) { return b.first == block_name; });
    if (!known) a.blocks.emplace_back(path, block);
    return;
  }
  fail(kC, fmt::format("no block named '{}'", block_name));
}

void PeftModel::attach_attention_adapter(const std::string& adapter_name, const std::string& attention_name,
                                         std::shared_ptr<nn::AttentionAdapter> module) {
  auto& a = adapter(adapter_name);
  for (auto& [path, holder] : attentions_) {
    if (path != attention_name) continue;
    holder->add(adapter_name, std::move(module));
    a.attentions.emplace_back(path, holder);
    return;
  }
  fail(kC, fmt::format("no attention layer named '{}'", attention_name));
}

void PeftModel::attach_prompt_encoder(const std::string& adapter_name, std::shared_ptr<nn::PromptEncoder> encoder) {
  auto& a = adapter(adapter_name);
  PEFT_CHECK(!a.prompt, kC, "adapter '{}' already has a prompt", adapter_name);
  if (!prompt_holder_) prompt_holder_ = base_->register_module("prompt_encoder", std::make_shared<torch::nn::Module>("PromptEncoders"));
  prompt_holder_->register_module(adapter_name, encoder);
  a.prompt = std::move(encoder);
}

std::shared_ptr<nn::PromptEncoder> PeftModel::prompt_encoder(const std::string& name) { return adapter(name).prompt; }

void PeftModel::attach_side_network(const std::string& adapter_name, std::shared_ptr<nn::SideNetwork> network) {
  auto& a = adapter(adapter_name);
  PEFT_CHECK(!a.side, kC, "adapter '{}' already has a side network", adapter_name);
  if (!side_holder_) side_holder_ = base_->register_module("side_network", std::make_shared<torch::nn::Module>("SideNetworks"));
  side_holder_->register_module(adapter_name, network);
  a.side = std::move(network);
}

std::shared_ptr<nn::SideNetwork> PeftModel::side_network(const std::string& name) { return adapter(name).side; }

void PeftModel::detach_modules(const std::string& name, Adapter& a) {
  for (auto& [path, lin] : a.layers) lin->remove_delta(name);
  for (auto& [path, block] : a.blocks) block->remove(name);
  for (auto& [path, holder] : a.attentions) holder->remove(name);
  if (a.prompt) prompt_holder_->unregister_module(name);
  if (a.side) side_holder_->unregister_module(name);
}

void PeftModel::add_trainable_base_tensor(const std::string& adapter_name, const std::string& param_name,
                                          const std::string& saved_as) {
  auto& a = adapter(adapter_name);
  for (const auto& [path, lin] : linears_)
    PEFT_CHECK(!(lin->quantized() && param_name == path + ".weight"), kC,
               "'{}' is stored quantized ({}): it cannot be trained or saved as a copy; leave '{}' unquantized",
               param_name, nn::quant_type_name(lin->quantized_weight()->type), path);
  if (!saved_as.empty()) a.saved_as[param_name] = saved_as;
  if (a.base_copies.count(param_name)) return;
  auto orig = originals_.find(param_name);
  at::Tensor source = orig != originals_.end() ? orig->second : base_param(param_name);
  a.base_copies[param_name] = source.detach().clone();
}

void PeftModel::add_modules_to_save(const std::string& adapter_name, const std::vector<std::string>& modules) {
  for (const auto& m : modules) {
    int found = 0;
    for (const auto& p : base_names_) {
      // HF matches module names by suffix; a parameter belongs to every module above it.
      bool inside = false;
      for (size_t dot = p.find('.'); dot != std::string::npos && !inside; dot = p.find('.', dot + 1))
        inside = core::is_or_ends_with_segment(p.substr(0, dot), m);
      if (inside) {
        add_trainable_base_tensor(adapter_name, p);
        ++found;
      }
    }
    auto tied = base_->tied_weights();
    for (const auto& [alias, target] : tied)
      PEFT_CHECK(alias.substr(0, alias.rfind('.')) != m, kC,
                 "modules_to_save: '{}' shares its weight with '{}' (tied); name '{}' instead", m, target,
                 target.substr(0, target.rfind('.')));
    PEFT_CHECK(found > 0, kC, "modules_to_save: no module named '{}' in this {} model", m, base_->model_type());
  }
}

void PeftModel::apply_state() {
  torch::NoGradGuard no_grad;
  for (auto& [name, data] : originals_) base_params_.at(name).set_data(data);
  originals_.clear();
  for (auto& [name, p] : base_params_) p.set_requires_grad(false);
  const auto running_set = enabled_ ? active_set_ : std::vector<std::string>{};
  for (auto& [path, lin] : linears_) lin->set_active(running_set);
  for (auto& [path, block] : blocks_) block->set_active(running_set);
  for (auto& [path, holder] : attentions_) holder->set_active(running_set);
  for (auto& [name, a] : adapters_) {
    const bool running = enabled_ && is_active(name);
    const bool train = running && a.trainable;
    for (auto& [path, lin] : a.layers)
      for (auto& p : lin->delta(name)->parameters()) p.set_requires_grad(train);
    for (auto& [path, block] : a.blocks)
      for (auto& [key, t] : block->state(name)) t.set_requires_grad(train && t.is_floating_point());
    for (auto& [path, holder] : a.attentions)
      for (auto& [key, t] : holder->state(name)) t.set_requires_grad(train);
    if (a.prompt)
      for (auto& p : a.prompt->parameters()) p.set_requires_grad(train);
    if (a.side)
      for (auto& p : a.side->parameters()) p.set_requires_grad(train);
    if (!running) continue;
    for (auto& [pname, copy] : a.base_copies) {
      at::Tensor live = base_params_.at(pname);
      originals_[pname] = live.detach();
      live.set_data(copy);
      live.mutable_grad() = at::Tensor();
      live.set_requires_grad(train);
    }
  }
}

void PeftModel::delete_adapter(const std::string& name) {
  auto& a = adapter(name);
  PEFT_CHECK(std::find(merged_.begin(), merged_.end(), name) == merged_.end(), kC,
             "adapter '{}' is merged; unmerge it before deleting it", name);
  detach_modules(name, a);
  adapters_.erase(name);
  order_.erase(std::remove(order_.begin(), order_.end(), name), order_.end());
  if (is_active(name)) {
    auto rest = active_set_;
    rest.erase(std::remove(rest.begin(), rest.end(), name), rest.end());
    if (rest.empty() && !order_.empty()) rest = {order_.front()};
    activate(rest);
  }
  apply_state();
}

void PeftModel::activate(std::vector<std::string> names) {
  active_set_ = std::move(names);
  active_ = active_set_.empty() ? "" : active_set_.front();
}

bool PeftModel::is_active(const std::string& name) const {
  return std::find(active_set_.begin(), active_set_.end(), name) != active_set_.end();
}

void PeftModel::set_adapter(const std::string& name) { set_adapters({name}); }

void PeftModel::set_adapters(const std::vector<std::string>& names) {
  PEFT_CHECK(!names.empty(), kC, "set_adapters needs at least one adapter name");
  PEFT_CHECK(merged_.empty(), kC, "adapter '{}' is merged; unmerge it before switching adapters", active_);
  std::map<std::string, std::string> copied_by;  // base tensor -> the adapter training a copy of it
  for (const auto& name : names) {
    const auto& a = adapter(name);
    PEFT_CHECK(std::count(names.begin(), names.end(), name) == 1, kC, "set_adapters: '{}' is listed twice", name);
    if (names.size() == 1) break;
    PEFT_CHECK(!a.prompt && !a.side, kC,
               "adapter '{}' ({}) cannot be active beside other adapters: its {} takes over the whole input; "
               "activate it alone",
               name, a.config->method(), a.prompt ? "prompt" : "side network");
    for (const auto& [pname, copy] : a.base_copies) {
      auto [it, fresh] = copied_by.emplace(pname, name);
      PEFT_CHECK(fresh, kC, "adapters '{}' and '{}' both train their own copy of '{}'; only one of them can be active",
                 it->second, name, pname);
    }
  }
  activate(names);
  apply_state();
}

void PeftModel::disable_adapters() {
  PEFT_CHECK(merged_.empty(), kC, "adapter '{}' is merged into the weights; unmerge it to run the bare base", active_);
  enabled_ = false;
  apply_state();
}

void PeftModel::enable_adapters() {
  enabled_ = true;
  apply_state();
}

void PeftModel::set_trainable(const std::string& name, bool trainable) {
  adapter(name).trainable = trainable;
  apply_state();
}

nn::RequantizationError PeftModel::merge_adapter(bool requantize) {
  PEFT_CHECK(!active_set_.empty(), kC, "no adapter to merge");
  PEFT_CHECK(merged_.empty(), kC, "adapter '{}' is already merged", merged_.empty() ? "" : merged_.front());
  PEFT_CHECK(enabled_, kC, "adapters are disabled; enable them before merging");
  for (const auto& name : active_set_) {  // refuse before any layer changes
    auto& a = adapter(name);
    PEFT_CHECK(a.blocks.empty(), kC,
               "adapter '{}' ({}) cannot be merged: its block adapters apply a nonlinearity between two projections, "
               "so no weight can absorb them; run it unmerged",
               name, a.config->method());
    PEFT_CHECK(!a.side, kC,
               "adapter '{}' ({}) cannot be merged: its side network computes the output beside the backbone; run it "
               "unmerged",
               name, a.config->method());
    PEFT_CHECK(a.attentions.empty() && !a.prompt, kC,
               "adapter '{}' ({}) cannot be merged: it adds keys and values (or virtual tokens) that attention mixes "
               "through a softmax, which no weight can absorb; run it unmerged",
               name, a.config->method());
    if (!requantize)
      for (auto& [path, lin] : a.layers)
        PEFT_CHECK(!lin->quantized(), kC,
                   "adapter '{}': layer '{}' is quantized ({}); merge with requantization (lossy: dequantize, add, "
                   "quantize again), or load the base unquantized (e.g. peft-merge --dtype bfloat16) to merge exactly",
                   name, path, nn::quant_type_name(lin->quantized_weight()->type));
  }
  std::vector<std::pair<std::string, nn::AdaptableLinear>> done;
  nn::RequantizationError error;
  try {
    for (const auto& name : active_set_)
      for (auto& [path, lin] : adapter(name).layers) {
        error.add(lin->merge(name, requantize));
        done.emplace_back(name, lin);
      }
  } catch (...) {
    for (auto it = done.rbegin(); it != done.rend(); ++it) it->second->unmerge(it->first, requantize);
    throw;
  }
  merged_ = active_set_;
  merged_requantized_ = requantize;
  return error;
}

nn::RequantizationError PeftModel::unmerge_adapter() {
  PEFT_CHECK(!merged_.empty(), kC, "no adapter is merged");
  nn::RequantizationError error;
  for (auto name = merged_.rbegin(); name != merged_.rend(); ++name)
    for (auto& [path, lin] : adapter(*name).layers) error.add(lin->unmerge(*name, merged_requantized_));
  merged_.clear();
  return error;
}

std::shared_ptr<models::PretrainedModel> PeftModel::merge_and_unload(bool requantize, nn::RequantizationError* error) {
  if (!active_set_.empty() && enabled_ && merged_.empty()) {
    auto e = merge_adapter(requantize);
    if (error) *error = e;
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, a] : adapters_) {
    for (auto& [path, lin] : a.layers) lin->remove_delta(name, /*keep_merged_weights=*/true);
    a.layers.clear();
    detach_modules(name, a);
  }
  originals_.clear();  // the active adapter's copies (modules_to_save) become the base's own
  adapters_.clear();
  order_.clear();
  merged_.clear();
  activate({});
  for (auto& p : base_->parameters()) p.set_requires_grad(false);
  return base_;
}

std::shared_ptr<models::PretrainedModel> PeftModel::unload() {
  if (!merged_.empty()) unmerge_adapter();
  for (auto& [name, a] : adapters_) detach_modules(name, a);
  adapters_.clear();
  order_.clear();
  activate({});
  apply_state();
  return base_;
}

std::vector<at::Tensor> PeftModel::trainable_parameters() {
  std::vector<at::Tensor> out;
  for (auto& p : base_->parameters(true))
    if (p.requires_grad()) out.push_back(p);
  return out;
}

std::map<std::string, at::Tensor> PeftModel::adapter_state_dict(const std::string& name) {
  auto& a = adapter(name);
  std::map<std::string, at::Tensor> out;
  for (auto& [path, lin] : a.layers)
    for (auto& [rel, t] : lin->delta(name)->delta_state()) out[kKeyPrefix + path + "." + rel] = t;
  const std::string& copy_prefix = a.prompt ? kPromptKeyPrefix : kKeyPrefix;
  for (auto& [pname, copy] : a.base_copies) {
    auto alias = a.saved_as.find(pname);
    out[copy_prefix + (alias == a.saved_as.end() ? pname : alias->second)] = copy;
  }
  for (auto& [path, block] : a.blocks)
    for (auto& [rel, t] : block->state(name)) out[kKeyPrefix + path + ".adapters." + rel] = t;
  for (auto& [path, holder] : a.attentions)
    for (auto& [rel, t] : holder->state(name)) out[kKeyPrefix + path + "." + rel] = t;
  if (a.side)
    for (auto& p : a.side->named_parameters()) out["side_network." + p.key()] = p.value();
  // HF stores a prompt as one tensor without prefix; an encoder's output is computed for it.
  if (a.prompt) out["prompt_embeddings"] = a.prompt->has_encoder() ? a.prompt->prompt_embeddings().detach()
                                                                     : a.prompt->prompt_embeddings();
  return out;
}

std::string PeftModel::checkpoint_key_alias(const std::string& name, const std::string& key) const {
  const auto& a = adapter(name);
  const std::string& prefix = a.prompt ? kPromptKeyPrefix : kKeyPrefix;
  for (const auto& [pname, saved] : a.saved_as) {
    if (key == prefix + saved) return prefix + pname;
    if (key == prefix + pname) return prefix + saved;
  }
  // Deltas of prompt methods written before their copies took HF's "base_model." keys.
  if (a.prompt)
    for (const auto& [pname, copy] : a.base_copies) {
      if (key == kPromptKeyPrefix + pname) return kKeyPrefix + pname;
      if (key == kKeyPrefix + pname) return kPromptKeyPrefix + pname;
    }
  return "";
}

ParameterCounts PeftModel::count_parameters() {
  ParameterCounts c;
  for (auto& p : base_->parameters(true)) {
    c.total += p.numel();
    if (p.requires_grad()) c.trainable += p.numel();
  }
  for (const auto& [path, lin] : linears_)  // its `weight` is empty; the codes hold the weights
    if (lin->quantized()) c.total += lin->quantized_weight()->numel();
  // Like HF's ModulesToSaveWrapper: the original module and every adapter's copy all count.
  for (auto& [pname, t] : originals_) c.total += t.numel();
  for (auto& [name, a] : adapters_)
    if (!(enabled_ && is_active(name)))
      for (auto& [pname, copy] : a.base_copies) c.total += copy.numel();
  return c;
}

int64_t PeftModel::base_parameter_count() const {
  int64_t n = 0;
  for (const auto& [name, t] : base_params_) n += t.numel();
  for (const auto& [path, lin] : linears_)
    if (lin->quantized()) n += lin->quantized_weight()->numel();
  return n;
}

std::string PeftModel::trainable_parameters_report() {
  auto c = count_parameters();
  const double pct = c.total > 0 ? 100.0 * static_cast<double>(c.trainable) / static_cast<double>(c.total) : 0.0;
  std::string report = fmt::format("trainable params: {} || all params: {} || trainable%: {:.4f}",
                                   core::with_thousands(c.trainable), core::with_thousands(c.total), pct);
  const auto q = models::quantized_storage(*base_);
  if (q.layers > 0)
    report += fmt::format(" || quantized: {} linears, {}, {} weights in {}", q.layers, q.formats,
                          core::with_thousands(q.weights), core::human_bytes(q.bytes));
  return report;
}

}  // namespace peft
