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

at::Tensor KVCache::cross_attention_mask(const at::Tensor& given) {
  if (!has_cross_attention()) cross_mask_ = given;
  return cross_mask_;
}

void KVCache::select_rows(const at::Tensor& rows) {
  PEFT_CHECK(layers_seen_ == 0, kC, "rows selected in the middle of a forward");
  for (auto* list : {&keys_, &values_, &cross_keys_, &cross_values_})
    for (auto& t : *list)
      if (t.defined()) t = t.index_select(0, rows.to(t.device()));
  for (auto* m : {&mask_, &cross_mask_})
    if (m->defined()) *m = m->index_select(0, rows.to(m->device()));
}

namespace {
/// A key mask [rows, own] (undefined: all ones) as [rows, length] with zeros before (`left`) or after it.
at::Tensor padded_mask(const at::Tensor& mask, int64_t rows, int64_t own, int64_t length, bool left,
                       c10::Device device) {
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  at::Tensor m = mask.defined() ? mask.to(opts) : torch::ones({rows, own}, opts);
  if (own == length) return m;
  at::Tensor pad = torch::zeros({rows, length - own}, opts);
  return left ? torch::cat({pad, m}, 1) : torch::cat({m, pad}, 1);
}

/// [b, h, own, d] -> [b, h, length, d] with zeros before (`left`) or after.
at::Tensor padded_keys(const at::Tensor& t, int64_t length, bool left) {
  const int64_t own = t.size(2);
  if (own == length) return t;
  at::Tensor pad = torch::zeros({t.size(0), t.size(1), length - own, t.size(3)}, t.options());
  return left ? torch::cat({pad, t}, 2) : torch::cat({t, pad}, 2);
}
}  // namespace

void KVCache::add_cross_rows(const KVCache& other) {
  PEFT_CHECK(cross_keys_.size() == other.cross_keys_.size(), kC,
             "adding rows with cross-attention keys for {} layers to a cache with {}", other.cross_keys_.size(),
             cross_keys_.size());
  for (size_t l = 0; l < cross_keys_.size(); ++l)
    PEFT_CHECK(cross_keys_[l].defined() && other.cross_keys_[l].defined(), kC,
               "layer {}: cross-attention keys not computed yet (run the rows' first forward before joining them)", l);
  const int64_t own = cross_keys_.front().size(2), theirs = other.cross_keys_.front().size(2);
  const int64_t length = std::max(own, theirs);
  if (cross_mask_.defined() || other.cross_mask_.defined() || own != theirs) {
    const c10::Device device = cross_keys_.front().device();
    cross_mask_ = torch::cat({padded_mask(cross_mask_, batch(), own, length, false, device),
                              padded_mask(other.cross_mask_, other.batch(), theirs, length, false, device)},
                             0);
  }
  for (size_t l = 0; l < cross_keys_.size(); ++l) {
    cross_keys_[l] =
        torch::cat({padded_keys(cross_keys_[l], length, false), padded_keys(other.cross_keys_[l], length, false)}, 0);
    cross_values_[l] =
        torch::cat({padded_keys(cross_values_[l], length, false), padded_keys(other.cross_values_[l], length, false)}, 0);
  }
}

void KVCache::add_rows(const KVCache& other) {
  PEFT_CHECK(layers_seen_ == 0 && other.layers_seen_ == 0, kC, "rows added in the middle of a forward");
  PEFT_CHECK(!other.empty(), kC, "adding the rows of an empty cache (run their prompt first)");
  PEFT_CHECK((empty() && !has_cross_attention()) || has_cross_attention() == other.has_cross_attention(), kC,
             "adding the rows of {} cache to {} one: an encoder-decoder's rows join an encoder-decoder's batch only",
             other.has_cross_attention() ? "an encoder-decoder's" : "a decoder's",
             has_cross_attention() ? "an encoder-decoder's" : "a decoder's");
  if (empty()) {
    *this = other;
    return;
  }
  PEFT_CHECK(keys_.size() == other.keys_.size(), kC, "adding rows of a {}-layer cache to a {}-layer one",
             other.keys_.size(), keys_.size());
  const int64_t length = std::max(length_, other.length_);
  at::Tensor combined_mask;  // computed before the rows change
  if (mask_.defined() || other.mask_.defined() || length_ != other.length_) {
    const c10::Device device = keys_.front().device();
    combined_mask = torch::cat({padded_mask(mask_, batch(), length_, length, true, device),
                                padded_mask(other.mask_, other.batch(), other.length_, length, true, device)},
                               0);
  }
  if (has_cross_attention()) add_cross_rows(other);  // before keys_ change: it reads batch()
  for (size_t l = 0; l < keys_.size(); ++l) {
    keys_[l] = torch::cat({padded_keys(keys_[l], length, true), padded_keys(other.keys_[l], length, true)}, 0);
    values_[l] = torch::cat({padded_keys(values_[l], length, true), padded_keys(other.values_[l], length, true)}, 0);
  }
  mask_ = combined_mask;
  length_ = length;
}

int64_t KVCache::drop_unattended_prefix() {
  PEFT_CHECK(layers_seen_ == 0, kC, "positions dropped in the middle of a forward");
  drop_unattended_cross_suffix();
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

void KVCache::drop_unattended_cross_suffix() {
  if (!cross_mask_.defined() || cross_keys_.empty() || !cross_keys_.front().defined()) return;
  const at::Tensor attended = cross_mask_.ne(0).any(0).nonzero();  // source positions some row attends
  if (attended.numel() == 0) return;
  const int64_t keep = attended.max().item<int64_t>() + 1, length = cross_mask_.size(1);
  if (keep < length) {
    for (auto* list : {&cross_keys_, &cross_values_})
      for (auto& t : *list)
        if (t.defined()) t = t.narrow(2, 0, keep).contiguous();
    cross_mask_ = cross_mask_.narrow(1, 0, keep).contiguous();
  }
  if (cross_mask_.ne(0).all().item<bool>()) cross_mask_ = at::Tensor();
}

void KVCache::clear() { *this = KVCache(); }

int64_t KVCache::bytes() const {
  int64_t n = 0;
  for (const auto* m : {&mask_, &cross_mask_})
    if (m->defined()) n += m->numel() * m->element_size();
  for (const auto* list : {&keys_, &values_, &cross_keys_, &cross_values_})
    for (const auto& t : *list)
      if (t.defined()) n += t.numel() * t.element_size();
  return n;
}

}  // namespace peft::nn
