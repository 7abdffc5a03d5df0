// The keys and values a causal decoder has computed so far, layer by layer, so that decoding runs
// the prompt once and then one token per step (Hugging Face's past_key_values). Keys are stored
// as attention scores them (rotated in LLaMA). A prefix-tuning adapter's keys and values are the
// first entries, a prompt-tuning adapter's virtual tokens the first positions. An encoder-decoder's
// decoder also keeps each layer's cross-attention keys and values here: they depend on the encoder
// alone, so they are computed on the first step and reused, with the encoder's mask of them.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::nn {

class KVCache {
 public:
  /// Cached key positions per layer (prefix entries, virtual tokens and tokens alike); 0 when empty.
  int64_t length() const { return length_; }
  bool empty() const { return length_ == 0; }
  /// Rows of the batch the cache holds (0 when empty).
  int64_t batch() const;

  /// Called by the model once per forward, before its `layers` layers: the key mask [batch,
  /// length + n] (1 = attend, 0 = padding) of the cached keys followed by `new_keys` [batch, n] of
  /// the n positions this forward adds; undefined while every key is attended.
  at::Tensor extend_key_mask(const at::Tensor& new_keys, int64_t batch, int64_t n, size_t layers);
  /// Called by layer `layer` with its new keys / values [batch, kv_heads, n, head_dim]: stores them
  /// after the cached ones and returns all of them. The cache's length grows when the last layer
  /// has appended.
  std::pair<at::Tensor, at::Tensor> append(size_t layer, const at::Tensor& key, const at::Tensor& value);

  /// Layer `layer`'s cross-attention keys and values: `compute()`'s on the first call, the same
  /// tensors after (until clear or select_rows, which keeps their rows).
  std::pair<at::Tensor, at::Tensor> cross_attention(size_t layer,
                                                    const std::function<std::pair<at::Tensor, at::Tensor>()>& compute);
  bool has_cross_attention() const { return !cross_keys_.empty(); }
  /// The encoder mask [batch, source_len] of the cross-attention keys (undefined: all attended):
  /// `given` while none are cached (it is kept with them), the kept one after — rows joined from
  /// other caches have sources of other lengths, padded.
  at::Tensor cross_attention_mask(const at::Tensor& given);

  /// Keeps the batch rows `rows` (int64 indices, in that order) of every cached tensor: the rows
  /// of a batched generation that are still running.
  void select_rows(const at::Tensor& rows);
  /// Appends `other`'s rows after this cache's (continuous batching: a request that ran its prompt
  /// alone joins the running batch). The shorter side is left-padded with masked positions; an
  /// encoder-decoder's cross-attention keys are right-padded to the longer source, masked too.
  void add_rows(const KVCache& other);
  /// Drops the leading positions that no row attends (the padding of rows that have left a
  /// continuous batch) and returns how many. length() shrinks by as much, so later forwards must
  /// pass their position_ids: the default numbering counts cached positions (T5's relative
  /// positions need none). The cross-attention keys' trailing padding goes too.
  int64_t drop_unattended_prefix();
  void clear();

  /// Bytes the cached keys, values and mask take.
  int64_t bytes() const;

 private:
  void add_cross_rows(const KVCache& other);
  void drop_unattended_cross_suffix();

  std::vector<at::Tensor> keys_, values_;
  std::vector<at::Tensor> cross_keys_, cross_values_;  ///< per decoder layer; undefined until computed
  at::Tensor cross_mask_;    ///< [batch, source_len] of the cross-attention keys, undefined while all ones
  at::Tensor mask_;          ///< [batch, length], undefined while all ones
  int64_t length_ = 0;
  int64_t pending_ = 0;      ///< positions the current forward adds
  at::Tensor pending_mask_;  ///< the mask once the current forward completes
  size_t layers_seen_ = 0;   ///< layers that appended in the current forward
};

/// One layer's handle on a cache (none: keys and values pass through).
struct LayerCache {
  KVCache* cache = nullptr;
  size_t layer = 0;
  std::pair<at::Tensor, at::Tensor> extend(const at::Tensor& key, const at::Tensor& value) const {
    return cache ? cache->append(layer, key, value) : std::make_pair(key, value);
  }
};

}  // namespace peft::nn
