#include "peft/methods/prompt_learning.h"

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/peft_model.h"

namespace peft::methods {

const std::vector<std::string>& PromptLearningFields::keys() {
  static const std::vector<std::string> k = {"num_virtual_tokens", "token_dim", "num_transformer_submodules",
                                             "num_attention_heads", "num_layers"};
  return k;
}

void PromptLearningFields::read(const nlohmann::json& j, const std::string& where, const std::string& c) {
  using core::get_or;
  num_virtual_tokens = get_or<int64_t>(j, "num_virtual_tokens", num_virtual_tokens, c, where);
  token_dim = get_or<int64_t>(j, "token_dim", 0, c, where);
  num_transformer_submodules = get_or<int64_t>(j, "num_transformer_submodules", 1, c, where);
  num_attention_heads = get_or<int64_t>(j, "num_attention_heads", 0, c, where);
  num_layers = get_or<int64_t>(j, "num_layers", 0, c, where);
}

void PromptLearningFields::write(nlohmann::json& j) const {
  auto or_null = [](int64_t v) { return v > 0 ? nlohmann::json(v) : nlohmann::json(nullptr); };
  j["num_virtual_tokens"] = num_virtual_tokens;
  j["token_dim"] = or_null(token_dim);
  j["num_transformer_submodules"] = num_transformer_submodules;
  j["num_attention_heads"] = or_null(num_attention_heads);
  j["num_layers"] = or_null(num_layers);
}

void PromptLearningFields::validate(const std::string& c) const {
  PEFT_CHECK(num_virtual_tokens > 0, c, "num_virtual_tokens must be positive, found {}", num_virtual_tokens);
  PEFT_CHECK(token_dim >= 0 && num_attention_heads >= 0 && num_layers >= 0, c,
             "token_dim, num_attention_heads and num_layers must be positive or null, found {}, {}, {}", token_dim,
             num_attention_heads, num_layers);
  PEFT_CHECK(num_transformer_submodules == 1, c,
             "num_transformer_submodules must be 1 (encoder-only and decoder-only models), found {}",
             num_transformer_submodules);
}

void PromptLearningFields::resolve(const models::ModelGeometry& g, int64_t dim, int64_t heads, const std::string& c) {
  auto fill = [&](int64_t& field, int64_t expected, const char* key, const char* what) {
    PEFT_CHECK(field == 0 || field == expected, c, "{} is {}, but this model needs {} ({})", key, field, expected, what);
    field = expected;
  };
  fill(num_layers, g.num_layers, "num_layers", "its layer count");
  fill(token_dim, dim, "token_dim", heads == g.num_heads ? "its hidden size" : "key/value heads x head_dim");
  fill(num_attention_heads, heads, "num_attention_heads",
       heads == g.num_heads ? "its attention heads" : "its key/value heads");
}

namespace {
/// An embedding module whose weight is `table` [p, width].
torch::nn::Embedding table_module(const at::Tensor& table) {
  return torch::nn::Embedding(torch::nn::EmbeddingOptions(table.size(0), table.size(1))._weight(table));
}
}  // namespace

PromptEncoder::PromptEncoder(at::Tensor table, torch::nn::Sequential transform, PromptPlacement placement,
                             const models::ModelGeometry& geometry)
    : torch::nn::Module("PromptEncoder"), placement_(placement), geometry_(geometry) {
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
  const at::Tensor& ref = inputs.input_ids.defined() ? inputs.input_ids : inputs.pixel_values;
  PEFT_CHECK(ref.defined() && ref.dim() >= 2, "prompt", "a prompt needs input_ids or pixel_values to size the batch");
  const int64_t B = ref.size(0);
  models::ModelInputs out = inputs;
  at::Tensor table = prompt_embeddings();
  const int64_t p = table.size(0);
  if (placement_ == PromptPlacement::kInputEmbeddings) {
    out.prompt_embeds = table.unsqueeze(0).expand({B, p, table.size(1)});
    return out;
  }
  // [p, 2L * Hkv * d] -> [2L, Hkv, p, d]: layer l's key is row 2l, its value 2l + 1 (HF's layout).
  const auto& g = geometry_;
  at::Tensor kv = table.view({p, 2 * g.num_layers, g.num_kv_heads, g.head_dim}).permute({1, 2, 0, 3});
  out.attention_prefix.clear();
  for (int64_t l = 0; l < g.num_layers; ++l) {
    auto batch = [&](int64_t row) { return kv[row].unsqueeze(0).expand({B, g.num_kv_heads, p, g.head_dim}); };
    out.attention_prefix.push_back({batch(2 * l), batch(2 * l + 1)});
  }
  return out;
}

at::TensorOptions base_tensor_options(PeftModel& model) {
  auto params = model.base_model().parameters();
  PEFT_CHECK(!params.empty(), "prompt", "the base model has no parameters");
  return params.front().options().requires_grad(false);
}

}  // namespace peft::methods
