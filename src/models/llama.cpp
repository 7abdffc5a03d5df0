#include "peft/models/llama.h"

#include <cmath>

#include <torch/torch.h>

#include "init_weights.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/strings.h"
#include "peft/nn/attention.h"
#include "peft/nn/attention_mask.h"
#include "prompt_inputs.h"

namespace peft::models {
namespace F = torch::nn::functional;
namespace {
constexpr const char* kC = "llama";
}

// ---- config ------------------------------------------------------------------

void LlamaConfig::validate() const {
  PEFT_CHECK(vocab_size > 0 && hidden_size > 0 && intermediate_size > 0 && num_hidden_layers > 0 &&
                 num_attention_heads > 0 && num_key_value_heads > 0 && max_position_embeddings > 0,
             kC,
             "config.json: vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
             "num_key_value_heads and max_position_embeddings must be positive");
  PEFT_CHECK(hidden_size % num_attention_heads == 0, kC,
             "config.json: hidden_size ({}) must be divisible by num_attention_heads ({})", hidden_size,
             num_attention_heads);
  PEFT_CHECK(num_attention_heads % num_key_value_heads == 0, kC,
             "config.json: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
             num_attention_heads, num_key_value_heads);
  PEFT_CHECK(head_dim() % 2 == 0, kC, "config.json: head_dim (hidden_size / num_attention_heads = {}) must be even "
             "for rotary embeddings", head_dim());
  PEFT_CHECK(attention_dropout >= 0.0 && attention_dropout < 1.0, kC,
             "config.json: attention_dropout must be in [0, 1), found {}", attention_dropout);
  nn::activation(hidden_act);
  nn::RotaryEmbedding(head_dim(), rope_theta, max_position_embeddings, rope_scaling);  // validates
}

LlamaConfig LlamaConfig::from_json(const nlohmann::json& j) {
  LlamaConfig cfg;
  const std::string w = "config.json";
  using core::get_or;
  cfg.vocab_size = get_or<int64_t>(j, "vocab_size", cfg.vocab_size, kC, w);
  cfg.hidden_size = get_or<int64_t>(j, "hidden_size", cfg.hidden_size, kC, w);
  cfg.intermediate_size = get_or<int64_t>(j, "intermediate_size", cfg.intermediate_size, kC, w);
  cfg.num_hidden_layers = get_or<int64_t>(j, "num_hidden_layers", cfg.num_hidden_layers, kC, w);
  cfg.num_attention_heads = get_or<int64_t>(j, "num_attention_heads", cfg.num_attention_heads, kC, w);
  cfg.num_key_value_heads = cfg.num_attention_heads;
  if (j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null())
    cfg.num_key_value_heads = get_or<int64_t>(j, "num_key_value_heads", cfg.num_key_value_heads, kC, w);
  cfg.hidden_act = get_or<std::string>(j, "hidden_act", cfg.hidden_act, kC, w);
  cfg.max_position_embeddings = get_or<int64_t>(j, "max_position_embeddings", cfg.max_position_embeddings, kC, w);
  cfg.initializer_range = get_or<double>(j, "initializer_range", cfg.initializer_range, kC, w);
  cfg.rms_norm_eps = get_or<double>(j, "rms_norm_eps", cfg.rms_norm_eps, kC, w);
  cfg.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", cfg.tie_word_embeddings, kC, w);
  cfg.rope_theta = get_or<double>(j, "rope_theta", cfg.rope_theta, kC, w);
  cfg.attention_bias = get_or<bool>(j, "attention_bias", cfg.attention_bias, kC, w);
  cfg.attention_dropout = get_or<double>(j, "attention_dropout", cfg.attention_dropout, kC, w);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const auto& rs = j["rope_scaling"];
    PEFT_CHECK(rs.is_object() && rs.contains("type") && rs["type"].is_string() && rs.contains("factor") &&
                   rs["factor"].is_number(),
               kC, "config.json: rope_scaling must be {{\"type\": \"linear\"|\"dynamic\", \"factor\": number}}, found {}",
               rs.dump());
    cfg.rope_scaling.type = rs["type"].get<std::string>();
    cfg.rope_scaling.factor = rs["factor"].get<double>();
  }
  cfg.head = HeadConfig::from_json(j, kC);
  cfg.original = j;
  cfg.validate();
  return cfg;
}

nlohmann::json LlamaConfig::to_json() const {
  nlohmann::json j = original.is_object() ? original : nlohmann::json::object();
  j["model_type"] = "llama";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["hidden_act"] = hidden_act;
  j["max_position_embeddings"] = max_position_embeddings;
  j["initializer_range"] = initializer_range;
  j["rms_norm_eps"] = rms_norm_eps;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["rope_theta"] = rope_theta;
  j["rope_scaling"] = rope_scaling.type.empty()
                          ? nlohmann::json(nullptr)
                          : nlohmann::json{{"type", rope_scaling.type}, {"factor", rope_scaling.factor}};
  j["attention_bias"] = attention_bias;
  j["attention_dropout"] = attention_dropout;
  head.to_json(j);
  return j;
}

// ---- modules -----------------------------------------------------------------

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& config)
    : heads_(config.num_attention_heads),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim()),
      dropout_(config.attention_dropout) {
  const int64_t D = config.hidden_size;
  const bool b = config.attention_bias;
  q_proj = register_module("q_proj", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, heads_ * head_dim_).bias(b)));
  k_proj = register_module("k_proj", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, kv_heads_ * head_dim_).bias(b)));
  v_proj = register_module("v_proj", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, kv_heads_ * head_dim_).bias(b)));
  o_proj = register_module("o_proj", nn::AdaptableLinear(nn::AdaptableLinearOptions(heads_ * head_dim_, D).bias(b)));
  adapters = register_module("adapters", nn::AttentionAdapters());
}

at::Tensor LlamaAttentionImpl::forward(const at::Tensor& hidden, const at::Tensor& additive_mask,
                                       const at::Tensor& cos, const at::Tensor& sin,
                                       const nn::AttentionPrefix& prefix) {
  at::Tensor q = nn::apply_rotary(nn::split_heads(q_proj->forward(hidden), heads_, head_dim_), cos, sin);
  auto [k, v] = nn::with_past(prefix, nn::apply_rotary(nn::split_heads(k_proj->forward(hidden), kv_heads_, head_dim_), cos, sin),
                              nn::split_heads(v_proj->forward(hidden), kv_heads_, head_dim_));
  nn::AttentionOptions opts;
  opts.score_divisor = std::sqrt(static_cast<double>(head_dim_));
  opts.dropout = dropout_;
  opts.training = is_training();
  opts.softmax_in_float32 = true;
  const int64_t rep = heads_ / kv_heads_;
  at::Tensor context = nn::attention(q, nn::repeat_kv(k, rep), nn::repeat_kv(v, rep), additive_mask, opts);
  if (adapters->any_active()) {
    nn::AttentionView view;
    view.queries = q;
    view.score_divisor = opts.score_divisor;
    view.key_value = [&](const at::Tensor& x) {
      auto heads = [&](const at::Tensor& t) { return nn::repeat_kv(nn::split_heads(t, kv_heads_, head_dim_), rep); };
      return std::make_pair(heads(k_proj->forward(x)), heads(v_proj->forward(x)));
    };
    context = adapters->apply(context, view);
  }
  return o_proj->forward(nn::merge_heads(context));
}

LlamaMLPImpl::LlamaMLPImpl(const LlamaConfig& config) : act_(nn::activation(config.hidden_act)) {
  const int64_t D = config.hidden_size, I = config.intermediate_size;
  gate_proj = register_module("gate_proj", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, I).bias(false)));
  up_proj = register_module("up_proj", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, I).bias(false)));
  down_proj = register_module("down_proj", nn::AdaptableLinear(nn::AdaptableLinearOptions(I, D).bias(false)));
}

at::Tensor LlamaMLPImpl::forward(const at::Tensor& x) {
  return down_proj->forward(act_(gate_proj->forward(x)) * up_proj->forward(x));
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaConfig& config) {
  self_attn = register_module("self_attn", LlamaAttention(config));
  mlp = register_module("mlp", LlamaMLP(config));
  input_layernorm = register_module("input_layernorm", nn::RMSNorm(config.hidden_size, config.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", nn::RMSNorm(config.hidden_size, config.rms_norm_eps));
  adapters = register_module("adapters", nn::BlockAdapters());
}

at::Tensor LlamaDecoderLayerImpl::forward(const at::Tensor& hidden, const at::Tensor& additive_mask,
                                          const at::Tensor& cos, const at::Tensor& sin,
                                          const nn::AttentionPrefix& prefix) {
  at::Tensor a = input_layernorm->forward(hidden);
  at::Tensor h = hidden + adapters->apply("attention", a, self_attn->forward(a, additive_mask, cos, sin, prefix));
  at::Tensor f = post_attention_layernorm->forward(h);
  return h + adapters->apply("ffn", f, mlp->forward(f));
}

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& config)
    : config_(config),
      rotary_(config.head_dim(), config.rope_theta, config.max_position_embeddings, config.rope_scaling) {
  auto emb = torch::nn::EmbeddingOptions(config.vocab_size, config.hidden_size);
  if (config.head.pad_token_id && *config.head.pad_token_id >= 0 && *config.head.pad_token_id < config.vocab_size)
    emb.padding_idx(*config.head.pad_token_id);
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(emb));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layers->push_back(LlamaDecoderLayer(config));
  norm = register_module("norm", nn::RMSNorm(config.hidden_size, config.rms_norm_eps));
}

ModelOutput LlamaModelImpl::forward(const ModelInputs& inputs) {
  const bool given = given_embedding_output(inputs, config_.geometry(), kC);
  const at::Tensor& ids = inputs.input_ids;
  PEFT_CHECK(given || (ids.defined() && ids.dim() == 2), kC, "input_ids must be a [batch, seq] tensor, found {}",
             ids.defined() ? c10::str(ids.sizes()) : "none");
  PEFT_CHECK(!inputs.pixel_values.defined() && !inputs.token_type_ids.defined(), kC,
             "pixel_values / token_type_ids given to a LLaMA model (it takes input_ids and attention_mask)");
  const int64_t B = given ? inputs.embedding_output.size(0) : ids.size(0);
  const int64_t T = given ? inputs.embedding_output.size(1) : ids.size(1);
  const auto lengths = given ? PromptLengths{} : check_prompt_inputs(inputs, B, config_.geometry(), kC);
  const bool ckpt = nn::checkpointing_applies(checkpoint_blocks, is_training());
  check_cache_use(inputs, /*decoder=*/true, ckpt, kC);
  // Keys: cached positions, the prefix, the virtual tokens, the tokens.
  const int64_t past = cached_positions(inputs), S = lengths.virtual_tokens + T, keys = past + lengths.prefix + S;
  at::Tensor hidden = given ? inputs.embedding_output : prepend_prompt(inputs.prompt_embeds, embed_tokens->forward(ids));
  const at::Tensor positions =
      decoder_positions(inputs, B, lengths.virtual_tokens, T, past + lengths.prefix, hidden.device(), kC);
  if (inputs.attention_mask.defined())
    PEFT_CHECK(given || inputs.attention_mask.sizes() == ids.sizes(), kC,
               "attention_mask has shape {}, expected {} like input_ids", c10::str(inputs.attention_mask.sizes()),
               c10::str(ids.sizes()));

  ModelOutput out;
  auto [cos, sin] = rotary_.cos_sin(positions, keys, hidden.scalar_type());
  at::Tensor mask = nn::causal_additive_mask(decoder_key_mask(inputs, B, lengths.prefix + lengths.virtual_tokens, T,
                                                              static_cast<int64_t>(layers->size())),
                                             B,
                                             S, keys, hidden.scalar_type(), hidden.device());
  if (inputs.output_hidden_states) out.hidden_states.push_back(hidden);
  const int64_t L = static_cast<int64_t>(layers->size());
  const auto params = ckpt ? nn::tensors_requiring_grad(parameters()) : std::vector<at::Tensor>{};
  for (int64_t i = 0; i < L; ++i) {
    auto layer = layers->ptr<LlamaDecoderLayerImpl>(i);
    const auto prefix = layer_prefix(inputs, i);
    const at::Tensor x = tap_stream(inputs, i, hidden);
    hidden = ckpt ? nn::checkpointed([layer, mask, cos = cos, sin = sin](const std::vector<at::Tensor>& in) {
                      return layer->forward(in[0], mask, cos, sin, {in[1], in[2]});
                    }, {x, prefix.key, prefix.value}, params)
                  : layer->forward(x, mask, cos, sin, prefix);
    if (inputs.output_hidden_states && i + 1 < L) out.hidden_states.push_back(hidden);
  }
  out.last_hidden_state = tap_final(inputs, norm->forward(tap_stream(inputs, L, hidden)));
  if (inputs.output_hidden_states) out.hidden_states.push_back(out.last_hidden_state);
  return out;
}

// ---- task models -------------------------------------------------------------

ModelGeometry LlamaFamilyModel::geometry() const { return config_.geometry(); }

nlohmann::json LlamaFamilyModel::config_json() const {
  auto j = config_.to_json();
  j["architectures"] = nlohmann::json::array({architecture()});
  return j;
}

bool LlamaFamilyModel::ignorable_checkpoint_key(const std::string& key) const {
  // Rotary inverse frequencies, a non-persistent buffer some checkpoints still carry.
  return core::ends_with(key, "rotary_emb.inv_freq");
}

void LlamaFamilyModel::init_weights() { init_standard(*this, config_.initializer_range); }

LlamaForFeatureExtraction::LlamaForFeatureExtraction(const LlamaConfig& config) : LlamaFamilyModel(config) {
  config_.validate();
  backbone_ = LlamaModel(config_);
  register_module("embed_tokens", backbone_->embed_tokens);
  register_module("layers", backbone_->layers);
  register_module("norm", backbone_->norm);
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

ModelOutput LlamaForFeatureExtraction::forward(const ModelInputs& inputs) {
  PEFT_CHECK(!inputs.labels.defined(), kC, "labels given to LlamaModel, which has no head; load a task model");
  return backbone_->forward(inputs);
}

LlamaForCausalLM::LlamaForCausalLM(const LlamaConfig& config) : LlamaFamilyModel(config) {
  config_.validate();
  model = register_module("model", LlamaModel(config_));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", nn::AdaptableLinear(nn::AdaptableLinearOptions(config_.hidden_size, config_.vocab_size).bias(false)));
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

std::map<std::string, std::string> LlamaForCausalLM::tied_weights() const {
  if (!config_.tie_word_embeddings) return {};
  return {{"lm_head.weight", "model.embed_tokens.weight"}};
}

ModelOutput LlamaForCausalLM::forward(const ModelInputs& inputs) {
  ModelOutput out = model->forward(inputs);
  out.logits = lm_head ? lm_head->forward(out.last_hidden_state)
                       : F::linear(out.last_hidden_state, model->embed_tokens->weight);
  if (inputs.labels.defined()) out.loss = causal_lm_loss(out.logits, lm_labels(inputs), inputs.per_example_loss);
  return out;
}

LlamaForSequenceClassification::LlamaForSequenceClassification(const LlamaConfig& config) : LlamaFamilyModel(config) {
  config_.validate();
  model = register_module("model", LlamaModel(config_));
  score = register_module("score", nn::AdaptableLinear(nn::AdaptableLinearOptions(config_.hidden_size, config_.head.num_labels).bias(false)));
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

ModelOutput LlamaForSequenceClassification::forward(const ModelInputs& inputs) {
  ModelOutput out = model->forward(inputs);
  at::Tensor last =
      last_token_index(inputs.input_ids, inputs.attention_mask, config_.head.pad_token_id, kC) + virtual_tokens(inputs);
  out.logits = gather_rows(score->forward(out.last_hidden_state), last);
  if (inputs.labels.defined()) out.loss = classification_loss(out.logits, inputs.labels, config_.head, inputs.per_example_loss);
  return out;
}

}  // namespace peft::models
