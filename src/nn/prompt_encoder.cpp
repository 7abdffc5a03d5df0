#include "peft/nn/prompt_encoder.h"

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {

namespace {
/// An embedding module whose weight is `table` [p, width].
torch::nn::Embedding table_module(const at::Tensor& table) {
  return torch::nn::Embedding(torch::nn::EmbeddingOptions(table.size(0), table.size(1))._weight(table));
}
}  // namespace

PromptEncoder::PromptEncoder(at::Tensor table, torch::nn::Sequential transform, PromptPlacement placement,
                             const models::ModelGeometry& geometry, int64_t submodules)
    : torch::nn::Module("PromptEncoder"), placement_(placement), geometry_(geometry), submodules_(submodules) {
  PEFT_CHECK(submodules == 1 || submodules == 2, "prompt", "submodules must be 1 or 2, found {}", submodules);
  PEFT_CHECK(placement != PromptPlacement::kInputEmbeddings || table.size(0) % submodules == 0, "prompt",
             "a prompt table for {} submodules needs a multiple of {} rows, found {}", submodules, submodules,
             table.size(0));
  embedding_ = register_module("embedding", table_module(table));
  if (transform && !transform->is_empty()) transform_ = register_module("transform", transform);
}

at::Tensor PromptEncoder::prompt_embeddings() {
  if (transform_.is_empty()) return embedding_->weight;
  return transform_->forward(embedding_->weight);
}

void PromptEncoder::eject() {
  if (transform_.is_empty()) return;
  at::Tensor table;
  {
    torch::NoGradGuard no_grad;
    table = prompt_embeddings().detach().clone();
  }
  const bool trains = embedding_->weight.requires_grad();
  unregister_module("transform");
  unregister_module("embedding");
  transform_ = torch::nn::Sequential(nullptr);
  embedding_ = register_module("embedding", table_module(table));
  embedding_->weight.set_requires_grad(trains);
}

models::ModelInputs PromptEncoder::prepare(const models::ModelInputs& inputs) {
  // Decoding: the virtual tokens / prefix went in with the first forward and are in the cache.
  if (inputs.kv_cache && !inputs.kv_cache->empty()) return inputs;
  const at::Tensor& ref = inputs.input_ids.defined() ? inputs.input_ids : inputs.pixel_values;
  PEFT_CHECK(ref.defined() && ref.dim() >= 2, "prompt", "a prompt needs input_ids or pixel_values to size the batch");
  const int64_t B = ref.size(0);
  models::ModelInputs out = inputs;
  at::Tensor table = prompt_embeddings();
  const int64_t p = table.size(0);
  if (placement_ == PromptPlacement::kInputEmbeddings) {
    // An encoder-decoder's encoder reads the first p rows (HF PEFT 0.7 leaves the decoder's unused).
    const int64_t n = p / submodules_;
    out.prompt_embeds = table.narrow(0, 0, n).unsqueeze(0).expand({B, n, table.size(1)});
    return out;
  }
  // [p, 2L * Hkv * d] -> [2L, Hkv, p, d]: layer l's key is row 2l, its value 2l + 1 (HF's layout).
  // With two submodules HF repeats the 2L rows and gives layer l rows 4l, 4l + 1 (then the
  // cross-attention's 4l + 2, 4l + 3, which T5 ignores): rows 4l mod 2L and 4l + 1 mod 2L.
  const auto& g = geometry_;
  const int64_t layers = g.prefix_layers();
  at::Tensor kv = table.view({p, 2 * layers, g.num_kv_heads, g.head_dim}).permute({1, 2, 0, 3});
  out.attention_prefix.clear();
  for (int64_t l = 0; l < layers; ++l) {
    auto batch = [&](int64_t row) { return kv[row].unsqueeze(0).expand({B, g.num_kv_heads, p, g.head_dim}); };
    const int64_t key_row = (2 * submodules_ * l) % (2 * layers);
    out.attention_prefix.push_back({batch(key_row), batch(key_row + 1)});
  }
  return out;
}

}  // namespace peft::nn
