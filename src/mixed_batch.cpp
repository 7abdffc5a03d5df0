// PeftModel's mixed-adapter batches: one adapter per row, each adapter's modules run once on its
// rows (see nn/row_groups.h).
#include <algorithm>
#include <set>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/nn/kv_cache.h"
#include "peft/nn/prompt_encoder.h"
#include "peft/peft_model.h"

namespace peft {
namespace {

constexpr const char* kC = "peft_model";

/// The input that counts the batch's rows (and gives their device).
const at::Tensor& batch_input(const models::ModelInputs& in) {
  // decoder_input_ids last: an encoder-decoder's decoding step over a cache may run without input_ids.
  for (const at::Tensor* t : {&in.input_ids, &in.pixel_values, &in.embedding_output, &in.decoder_input_ids})
    if (t->defined() && t->dim() >= 1) return *t;
  PEFT_CHECK(false, kC,
             "a mixed-adapter batch needs input_ids, pixel_values, embedding_output or decoder_input_ids to count its rows");
  return in.input_ids;
}

}  // namespace

struct PeftModel::ScopedState {
  PeftModel& model;
  std::vector<std::string> active;
  bool enabled;
  explicit ScopedState(PeftModel& m) : model(m), active(m.active_set_), enabled(m.enabled_) {}
  ScopedState(const ScopedState&) = delete;
  ScopedState& operator=(const ScopedState&) = delete;
  ~ScopedState() {
    model.set_row_groups({});
    if (model.active_set_ == active && model.enabled_ == enabled) return;  // nothing was switched
    model.activate(active);
    model.enabled_ = enabled;
    model.apply_state();
  }
};

void PeftModel::set_row_groups(const std::map<std::string, at::Tensor>& rows_by_adapter) {
  auto groups = [&](const std::string& module) {
    nn::RowGroups out;
    for (const auto& [name, rows] : rows_by_adapter) {
      nn::RowGroup g;
      g.adapter = name == kBaseAdapterName ? "" : name;
      g.rows = rows;
      if (!g.adapter.empty() && !module.empty()) {
        const auto& copies = adapter(name).base_copies;
        if (auto w = copies.find(module + ".weight"); w != copies.end()) g.weight = w->second;
        if (auto b = copies.find(module + ".bias"); b != copies.end()) g.bias = b->second;
      }
      out.push_back(std::move(g));
    }
    return out;
  };
  const bool clear = rows_by_adapter.empty();
  for (auto& [path, module] : routables_)
    dynamic_cast<nn::RowRoutable&>(*module).set_row_groups(clear ? nn::RowGroups{} : groups(path));
  const nn::RowGroups plain = clear ? nn::RowGroups{} : groups("");
  for (auto& [path, block] : blocks_) block->set_row_groups(plain);
  for (auto& [path, holder] : attentions_) holder->set_row_groups(plain);
}

models::ModelInputs PeftModel::prepare_mixed_prompts(const models::ModelInputs& inputs,
                                                     const std::map<std::string, at::Tensor>& rows_by_adapter) {
  models::ModelInputs out = inputs;
  bool first = true;
  for (const auto& entry : rows_by_adapter) {
    const at::Tensor& rows = entry.second;
    const models::ModelInputs own = adapter(entry.first).prompt->prepare(inputs);
    auto place = [&](at::Tensor& into, const at::Tensor& from) {
      if (first) into = torch::zeros_like(from);
      into = into.index_copy(0, rows, from.index_select(0, rows));
    };
    if (own.prompt_embeds.defined()) place(out.prompt_embeds, own.prompt_embeds);
    if (first) out.attention_prefix.resize(own.attention_prefix.size());
    for (size_t l = 0; l < own.attention_prefix.size(); ++l) {
      place(out.attention_prefix[l].key, own.attention_prefix[l].key);
      place(out.attention_prefix[l].value, own.attention_prefix[l].value);
    }
    first = false;
  }
  return out;
}

models::ModelOutput PeftModel::forward(const models::ModelInputs& inputs, const std::vector<std::string>& adapter_names) {
  const int64_t B = batch_input(inputs).size(0);
  PEFT_CHECK(static_cast<int64_t>(adapter_names.size()) == B, kC,
             "adapter_names has {} names for a batch of {} rows (one per row expected)", adapter_names.size(), B);
  PEFT_CHECK(!base_->is_training(), kC,
             "adapter_names (a mixed-adapter batch) is for inference: call eval() first, or train one adapter at a time");
  PEFT_CHECK(merged_.empty(), kC, "adapter '{}' is merged into the weights; unmerge it to choose adapters per row",
             merged_.empty() ? "" : merged_.front());
  std::vector<std::string> distinct;
  std::map<std::string, std::vector<int64_t>> rows;
  for (int64_t i = 0; i < B; ++i) {
    const std::string& name = adapter_names[static_cast<size_t>(i)];
    PEFT_CHECK(name == kBaseAdapterName || has_adapter(name), kC,
               "adapter_names[{}]: no adapter named '{}' (adapters: {}; '{}' runs the bare base)", i, name,
               fmt::join(order_, ", "), kBaseAdapterName);
    if (!rows.count(name)) distinct.push_back(name);
    rows[name].push_back(i);
  }
  if (distinct.size() == 1) {  // one adapter for every row: the ordinary forward with it active
    const bool base = distinct.front() == kBaseAdapterName;
    if (base ? !enabled_ || active_set_.empty() : enabled_ && active_set_ == distinct) return forward(inputs);
    ScopedState restore(*this);
    if (base) {
      enabled_ = false;
    } else {
      enabled_ = true;
      activate(distinct);
    }
    apply_state();
    return forward(inputs);
  }
  // What a row group cannot express is refused before anything changes.
  std::set<std::string> routable_tensors;
  for (const auto& [path, module] : routables_) {
    routable_tensors.insert(path + ".weight");
    routable_tensors.insert(path + ".bias");
  }
  std::vector<std::string> prompted, plain;
  for (const auto& name : distinct) {
    if (name == kBaseAdapterName) {
      plain.push_back(name);
      continue;
    }
    const auto& a = adapter(name);
    PEFT_CHECK(!a.side, kC,
               "adapter '{}' ({}) cannot share a batch with other adapters: its side network rewrites the whole "
               "forward; give its rows a batch of their own",
               name, a.config->method());
    for (const auto& [pname, copy] : a.base_copies)
      PEFT_CHECK(routable_tensors.count(pname), kC,
                 "adapter '{}' ({}) trains its own copy of '{}', which a mixed-adapter batch cannot apply per row "
                 "(only projection and norm weights and biases can); give its rows a batch of their own",
                 name, a.config->method(), pname);
    (a.prompt ? prompted : plain).push_back(name);
  }
  // Decoding with a filled cache: every prompt is among the cached keys, nothing is put in front.
  const bool prompts_cached = inputs.kv_cache && !inputs.kv_cache->empty();
  if (!prompted.empty() && !prompts_cached) {
    PEFT_CHECK(plain.empty(), kC,
               "adapter '{}' ({}) puts virtual tokens in front of its rows and '{}' does not: rows of one batch must "
               "have the same length; give them separate batches",
               prompted.front(), adapter(prompted.front()).config->method(), plain.front());
    const auto& first = *adapter(prompted.front()).prompt;
    for (const auto& name : prompted) {
      const auto& p = *adapter(name).prompt;
      PEFT_CHECK(p.placement() == first.placement() && p.num_virtual_tokens() == first.num_virtual_tokens(), kC,
                 "adapters '{}' ({}, {} virtual tokens) and '{}' ({}, {} virtual tokens) cannot share a batch: their "
                 "prompts differ in {}",
                 prompted.front(), adapter(prompted.front()).config->method(), first.num_virtual_tokens(), name,
                 adapter(name).config->method(), p.num_virtual_tokens(),
                 p.placement() != first.placement() ? "placement" : "length");
    }
  }
  const c10::Device device = batch_input(inputs).device();
  std::map<std::string, at::Tensor> row_index;
  for (const auto& [name, r] : rows) row_index[name] = torch::tensor(r, torch::kLong).to(device);
  ScopedState restore(*this);
  if (!originals_.empty()) {  // an adapter's copies are installed: the base's own tensors go back
    enabled_ = false;
    apply_state();
  }
  set_row_groups(row_index);
  return base_->forward(prompted.empty() || prompts_cached ? inputs : prepare_mixed_prompts(inputs, row_index));
}

}  // namespace peft
