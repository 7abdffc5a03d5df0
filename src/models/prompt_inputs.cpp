#include "prompt_inputs.h"

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::models {

PromptLengths check_prompt_inputs(const ModelInputs& inputs, int64_t batch, const ModelGeometry& g,
                                  const std::string& c) {
  PromptLengths out;
  if (inputs.prompt_embeds.defined()) {
    const auto& p = inputs.prompt_embeds;
    PEFT_CHECK(p.dim() == 3 && p.size(0) == batch && p.size(2) == g.hidden_size, c,
               "prompt_embeds has shape {}, expected [{}, virtual tokens, {}] (batch, hidden_size)", c10::str(p.sizes()),
               batch, g.hidden_size);
    out.virtual_tokens = p.size(1);
  }
  if (inputs.attention_prefix.empty()) return out;
  PEFT_CHECK(static_cast<int64_t>(inputs.attention_prefix.size()) == g.prefix_layers(), c,
             "attention_prefix has {} layers, the model has {}", inputs.attention_prefix.size(), g.prefix_layers());
  const int64_t len = inputs.attention_prefix.front().length();
  for (size_t i = 0; i < inputs.attention_prefix.size(); ++i) {
    const auto& pre = inputs.attention_prefix[i];
    for (const at::Tensor* t : {&pre.key, &pre.value}) {
      const std::vector<int64_t> expected = {batch, g.num_kv_heads, len, g.head_dim};
      PEFT_CHECK(t->defined() && t->sizes() == c10::IntArrayRef(expected), c,
                 "attention_prefix[{}] {} has shape {}, expected [{}, {}, {}, {}] (batch, key/value heads, prefix "
                 "length, head_dim)",
                 i, t == &pre.key ? "key" : "value", t->defined() ? c10::str(t->sizes()) : "none", batch,
                 g.num_kv_heads, len, g.head_dim);
    }
  }
  out.prefix = len;
  return out;
}

at::Tensor prepend_prompt(const at::Tensor& prompt_embeds, const at::Tensor& embeds) {
  if (!prompt_embeds.defined()) return embeds;
  return torch::cat({prompt_embeds.to(embeds.scalar_type()), embeds}, 1);
}

at::Tensor extend_mask(const at::Tensor& mask, int64_t leading) {
  if (!mask.defined() || leading == 0) return mask;
  return torch::cat({torch::ones({mask.size(0), leading}, mask.options()), mask}, 1);
}

at::Tensor prepend_constant(const at::Tensor& x, int64_t leading, int64_t value) {
  if (!x.defined() || leading == 0) return x;
  return torch::cat({torch::full({x.size(0), leading}, value, x.options()), x}, 1);
}

at::Tensor default_positions(int64_t batch, int64_t len, int64_t offset, c10::Device device) {
  return torch::arange(offset, offset + len, torch::TensorOptions().dtype(torch::kLong).device(device))
      .unsqueeze(0)
      .expand({batch, len});
}

at::Tensor lm_labels(const ModelInputs& inputs) {
  return prepend_constant(inputs.labels, virtual_tokens(inputs), -100);
}

bool given_embedding_output(const ModelInputs& inputs, const ModelGeometry& g, const std::string& c) {
  const at::Tensor& e = inputs.embedding_output;
  if (!e.defined()) return false;
  PEFT_CHECK(e.dim() == 3 && e.size(2) == g.hidden_size, c,
             "embedding_output has shape {}, expected [batch, seq, {}] (hidden_size)", c10::str(e.sizes()), g.hidden_size);
  PEFT_CHECK(!inputs.prompt_embeds.defined() && inputs.attention_prefix.empty(), c,
             "embedding_output cannot be combined with prompt_embeds or attention_prefix");
  for (const at::Tensor* t : {&inputs.input_ids, &inputs.attention_mask, &inputs.position_ids})
    PEFT_CHECK(!t->defined() || (t->dim() == 2 && t->size(0) == e.size(0) && t->size(1) == e.size(1)), c,
               "{} has shape {}, expected [{}, {}] like embedding_output",
               t == &inputs.input_ids ? "input_ids" : t == &inputs.attention_mask ? "attention_mask" : "position_ids",
               c10::str(t->sizes()), e.size(0), e.size(1));
  return true;
}

nn::AttentionPrefix layer_prefix(const ModelInputs& inputs, size_t layer) {
  nn::AttentionPrefix out = layer < inputs.attention_prefix.size() ? inputs.attention_prefix[layer] : nn::AttentionPrefix{};
  out.cache = {inputs.kv_cache.get(), layer};
  return out;
}

at::Tensor decoder_key_mask(const ModelInputs& inputs, int64_t batch, int64_t leading, int64_t seq, int64_t layers) {
  at::Tensor own = extend_mask(inputs.attention_mask, leading);
  return inputs.kv_cache ? inputs.kv_cache->extend_key_mask(own, batch, leading + seq, static_cast<size_t>(layers)) : own;
}

at::Tensor decoder_positions(const ModelInputs& inputs, int64_t batch, int64_t leading, int64_t seq, int64_t offset,
                             c10::Device device, const std::string& c) {
  if (!inputs.position_ids.defined()) return default_positions(batch, leading + seq, offset, device);
  PEFT_CHECK(inputs.position_ids.dim() == 2 && inputs.position_ids.size(0) == batch && inputs.position_ids.size(1) == seq,
             c, "position_ids has shape {}, expected [{}, {}] like input_ids", c10::str(inputs.position_ids.sizes()),
             batch, seq);
  const at::Tensor given = inputs.position_ids.to(torch::kLong);
  return leading == 0 ? given : torch::cat({default_positions(batch, leading, offset, device), given}, 1);
}

void check_cache_use(const ModelInputs& inputs, bool decoder, bool checkpointing, const std::string& c) {
  if (!inputs.kv_cache) return;
  PEFT_CHECK(decoder, c, "kv_cache given to a model that is not a decoder: a cache needs a causal LM (GPT-2, LLaMA)");
  PEFT_CHECK(!checkpointing, c, "kv_cache cannot be combined with gradient checkpointing while training");
  PEFT_CHECK(inputs.kv_cache->empty() || (!inputs.prompt_embeds.defined() && inputs.attention_prefix.empty()), c,
             "prompt_embeds / attention_prefix given with a filled kv_cache: they go in with the first forward only");
}

}  // namespace peft::models
