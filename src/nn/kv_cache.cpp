#include "peft/nn/kv_cache.h"

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {
namespace {
constexpr const char* kC = "kv_cache";
}

int64_t KVCache::batch() const {
  if (!keys_.empty() && keys_.front().defined()) return keys_.front().size(0);
  return mask_.defined() ? mask_.size(0) : 0;
}

at::Tensor KVCache::extend_key_mask(const at::Tensor& new_keys, int64_t batch, int64_t n, size_t layers) {
  PEFT_CHECK(empty() || this->batch() == batch, kC, "the cache holds {} rows, this forward has {}", this->batch(), batch);
  PEFT_CHECK(layers_seen_ == 0, kC, "a forward began before the previous one appended every layer ({} did)",
             layers_seen_);
  PEFT_CHECK(!new_keys.defined() || (new_keys.dim() == 2 && new_keys.size(0) == batch && new_keys.size(1) == n), kC,
             "the new positions' mask has shape {}, expected [{}, {}]", c10::str(new_keys.sizes()), batch, n);
  PEFT_CHECK(empty() || keys_.size() == layers, kC, "the cache holds {} layers, the model has {}", keys_.size(), layers);
  keys_.resize(layers);
  values_.resize(layers);
  pending_ = n;
  pending_mask_ = at::Tensor();
  if (!new_keys.defined() && !mask_.defined()) return {};
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(new_keys.defined() ? new_keys.device() : mask_.device());
  at::Tensor past = mask_.defined() ? mask_ : torch::ones({batch, length_}, opts);
  at::Tensor added = new_keys.defined() ? new_keys.to(torch::kLong) : torch::ones({batch, n}, opts);
  pending_mask_ = torch::cat({past, added}, 1);
  return pending_mask_;
}

std::pair<at::Tensor, at::Tensor> KVCache::append(size_t layer, const at::Tensor& key, const at::Tensor& value) {
  PEFT_CHECK(key.dim() == 4 && value.dim() == 4 && key.size(2) == pending_ && value.size(2) == pending_, kC,
             "layer {}: new keys {} / values {}, expected [batch, heads, {}, head_dim] (extend_key_mask first)", layer,
             c10::str(key.sizes()), c10::str(value.sizes()), pending_);
  PEFT_CHECK(layer < keys_.size(), kC, "layer {} of a cache for {} layers", layer, keys_.size());
  at::Tensor& k = keys_[layer];
  at::Tensor& v = values_[layer];
  PEFT_CHECK(k.defined() == (length_ > 0), kC, "layer {} appended twice in one forward", layer);
  k = k.defined() ? torch::cat({k, key}, 2) : key;
  v = v.defined() ? torch::cat({v, value}, 2) : value;
  if (++layers_seen_ == keys_.size()) {
    length_ += pending_;
    if (pending_mask_.defined()) mask_ = pending_mask_;
    pending_mask_ = at::Tensor();
    layers_seen_ = 0;
    pending_ = 0;
  }
  return {k, v};
}

std::pair<at::Tensor, at::Tensor> KVCache::cross_attention(
    size_t layer, const std::function<std::pair<at::Tensor, at::Tensor>()>& compute) {
  if (layer >= cross_keys_.size()) {
    cross_keys_.resize(layer + 1);
    cross_values_.resize(layer + 1);
  }
  if (!cross_keys_[layer].defined()) {
    auto [k, v] = compute();
    PEFT_CHECK(k.defined() && v.defined() && k.dim() == 4 && v.dim() == 4, kC,
               "layer {}: cross-attention keys / values must be [batch, heads, source_len, head_dim]", layer);
    PEFT_CHECK(empty() || k.size(0) == batch(), kC, "layer {}: cross-attention keys for {} rows, the cache holds {}",
               layer, k.size(0), batch());
    cross_keys_[layer] = k;
    cross_values_[layer] = v;
  }
  return {cross_keys_[layer], cross_values_[layer]};
}

void KVCache::select_rows(const at::Tensor& rows) {
  PEFT_CHECK(layers_seen_ == 0, kC, "rows selected in the middle of a forward");
  for (auto* list : {&keys_, &values_, &cross_keys_, &cross_values_})
    for (auto& t : *list)
      if (t.defined()) t = t.index_select(0, rows.to(t.device()));
  if (mask_.defined()) mask_ = mask_.index_select(0, rows.to(mask_.device()));
}

void KVCache::add_rows(const KVCache& other) {
  PEFT_CHECK(layers_seen_ == 0 && other.layers_seen_ == 0, kC, "rows added in the middle of a forward");
  PEFT_CHECK(!other.empty(), kC, "adding the rows of an empty cache (run their prompt first)");
  PEFT_CHECK(!has_cross_attention() && !other.has_cross_attention(), kC,
             "adding rows to an encoder-decoder's cache (their encoder outputs differ in length); run them in a batch "
             "of their own");
  if (empty()) {
    *this = other;
    return;
  }
  PEFT_CHECK(keys_.size() == other.keys_.size(), kC, "adding rows of a {}-layer cache to a {}-layer one",
             other.keys_.size(), keys_.size());
  const int64_t length = std::max(length_, other.length_);
  auto pad = [&](const at::Tensor& t, int64_t own) {  // [b, h, own, d] -> [b, h, length, d], zeros first
    if (own == length) return t;
    return torch::cat({torch::zeros({t.size(0), t.size(1), length - own, t.size(3)}, t.options()), t}, 2);
  };
  at::Tensor combined_mask;  // computed before the rows change
  if (mask_.defined() || other.mask_.defined() || length_ != other.length_) {
    auto full_mask = [&](const KVCache& c) {
      const auto opts = torch::TensorOptions().dtype(torch::kLong).device(c.keys_.front().device());
      at::Tensor m = c.mask_.defined() ? c.mask_ : torch::ones({c.batch(), c.length_}, opts);
      if (c.length_ == length) return m;
      return torch::cat({torch::zeros({m.size(0), length - c.length_}, opts), m.to(opts.device())}, 1);
    };
    combined_mask = torch::cat({full_mask(*this), full_mask(other)}, 0);
  }
  for (size_t l = 0; l < keys_.size(); ++l) {
    keys_[l] = torch::cat({pad(keys_[l], length_), pad(other.keys_[l], other.length_)}, 0);
    values_[l] = torch::cat({pad(values_[l], length_), pad(other.values_[l], other.length_)}, 0);
  }
  mask_ = combined_mask;
  length_ = length;
}

int64_t KVCache::drop_unattended_prefix() {
  PEFT_CHECK(layers_seen_ == 0, kC, "positions dropped in the middle of a forward");
  if (!mask_.defined() || length_ == 0) return 0;
  const at::Tensor attended = mask_.ne(0).any(0);  // [length]: some row attends the position
  if (!attended.any().item<bool>()) return 0;      // nothing attended at all: leave it to the caller
  const int64_t first = attended.to(torch::kInt).argmax().item<int64_t>();  // the first attended one
  if (first > 0) {
    for (auto* list : {&keys_, &values_})
      for (auto& t : *list)
        if (t.defined()) t = t.narrow(2, first, length_ - first).contiguous();
    mask_ = mask_.narrow(1, first, length_ - first).contiguous();
    length_ -= first;
  }
  if (mask_.ne(0).all().item<bool>()) mask_ = at::Tensor();  // every key attended again: no mask needed
  return first;
}

void KVCache::clear() { *this = KVCache(); }

int64_t KVCache::bytes() const {
  int64_t n = mask_.defined() ? mask_.numel() * mask_.element_size() : 0;
  for (const auto* list : {&keys_, &values_, &cross_keys_, &cross_values_})
    for (const auto& t : *list)
      if (t.defined()) n += t.numel() * t.element_size();
  return n;
}

}  // namespace peft::nn
