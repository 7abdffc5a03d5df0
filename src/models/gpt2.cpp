#include "peft/models/gpt2.h"

#include <cmath>
#include <limits>

#include <torch/torch.h>

#include "init_weights.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/strings.h"
#include "peft/nn/attention_mask.h"
#include "prompt_inputs.h"

namespace peft::models {
namespace F = torch::nn::functional;

// ---- config ------------------------------------------------------------------

void GPT2Config::validate() const {
  const char* c = "gpt2";
  PEFT_CHECK(vocab_size > 0 && n_positions > 0 && n_layer > 0 && n_head > 0 && n_embd > 0, c,
             "config.json: vocab_size, n_positions, n_layer, n_head, n_embd must be positive, found "
             "{}, {}, {}, {}, {}",
             vocab_size, n_positions, n_layer, n_head, n_embd);
  PEFT_CHECK(n_embd % n_head == 0, c, "config.json: n_embd ({}) must be divisible by n_head ({})",
             n_embd, n_head);
  PEFT_CHECK(inner_dim() > 0, c, "config.json: n_inner must be positive, found {}", inner_dim());
  for (double p : {resid_pdrop, embd_pdrop, attn_pdrop})
    PEFT_CHECK(p >= 0.0 && p < 1.0, c, "config.json: dropout probabilities must be in [0, 1), found {}", p);
  nn::activation(activation_function);  // throws for an unknown name
}

GPT2Config GPT2Config::from_json(const nlohmann::json& j) {
  const std::string c = "gpt2", w = "config.json";
  GPT2Config cfg;
  using core::get_or;
  cfg.vocab_size = get_or<int64_t>(j, "vocab_size", cfg.vocab_size, c, w);
  cfg.n_positions = get_or<int64_t>(j, "n_positions", cfg.n_positions, c, w);
  cfg.n_embd = get_or<int64_t>(j, "n_embd", cfg.n_embd, c, w);
  cfg.n_layer = get_or<int64_t>(j, "n_layer", cfg.n_layer, c, w);
  cfg.n_head = get_or<int64_t>(j, "n_head", cfg.n_head, c, w);
  if (j.contains("n_inner") && !j["n_inner"].is_null()) cfg.n_inner = get_or<int64_t>(j, "n_inner", 0, c, w);
  cfg.activation_function = get_or<std::string>(j, "activation_function", cfg.activation_function, c, w);
  cfg.resid_pdrop = get_or<double>(j, "resid_pdrop", cfg.resid_pdrop, c, w);
  cfg.embd_pdrop = get_or<double>(j, "embd_pdrop", cfg.embd_pdrop, c, w);
  cfg.attn_pdrop = get_or<double>(j, "attn_pdrop", cfg.attn_pdrop, c, w);
  cfg.layer_norm_epsilon = get_or<double>(j, "layer_norm_epsilon", cfg.layer_norm_epsilon, c, w);
  cfg.initializer_range = get_or<double>(j, "initializer_range", cfg.initializer_range, c, w);
  cfg.scale_attn_weights = get_or<bool>(j, "scale_attn_weights", cfg.scale_attn_weights, c, w);
  cfg.scale_attn_by_inverse_layer_idx =
      get_or<bool>(j, "scale_attn_by_inverse_layer_idx", cfg.scale_attn_by_inverse_layer_idx, c, w);
  cfg.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", cfg.tie_word_embeddings, c, w);
  PEFT_CHECK(!get_or<bool>(j, "add_cross_attention", false, c, w), c,
             "config.json: add_cross_attention=true (encoder-decoder GPT-2) is not supported");
  cfg.head = HeadConfig::from_json(j, c);
  cfg.original = j;
  cfg.validate();
  return cfg;
}

nlohmann::json GPT2Config::to_json() const {
  nlohmann::json j = original.is_object() ? original : nlohmann::json::object();
  j["model_type"] = "gpt2";
  j["vocab_size"] = vocab_size;
  j["n_positions"] = n_positions;
  j["n_embd"] = n_embd;
  j["n_layer"] = n_layer;
  j["n_head"] = n_head;
  j["n_inner"] = n_inner ? nlohmann::json(*n_inner) : nlohmann::json(nullptr);
  j["activation_function"] = activation_function;
  j["resid_pdrop"] = resid_pdrop;
  j["embd_pdrop"] = embd_pdrop;
  j["attn_pdrop"] = attn_pdrop;
  j["layer_norm_epsilon"] = layer_norm_epsilon;
  j["initializer_range"] = initializer_range;
  j["scale_attn_weights"] = scale_attn_weights;
  j["scale_attn_by_inverse_layer_idx"] = scale_attn_by_inverse_layer_idx;
  j["tie_word_embeddings"] = tie_word_embeddings;
  head.to_json(j);
  return j;
}

// ---- modules -----------------------------------------------------------------

GPT2AttentionImpl::GPT2AttentionImpl(const GPT2Config& config, int64_t layer_idx)
    : n_head_(config.n_head),
      head_dim_(config.n_embd / config.n_head),
      layer_idx_(layer_idx),
      scale_(config.scale_attn_weights),
      scale_by_layer_(config.scale_attn_by_inverse_layer_idx),
      attn_pdrop_(config.attn_pdrop),
      resid_pdrop_(config.resid_pdrop) {
  c_attn = register_module("c_attn", nn::AdaptableLinear(nn::AdaptableLinearOptions(config.n_embd, 3 * config.n_embd).fan_in_fan_out(true)));
  c_proj = register_module("c_proj", nn::AdaptableLinear(nn::AdaptableLinearOptions(config.n_embd, config.n_embd).fan_in_fan_out(true)));
  adapters = register_module("adapters", nn::AttentionAdapters());
}

at::Tensor GPT2AttentionImpl::forward(const at::Tensor& hidden, const at::Tensor& additive_mask,
                                      const nn::AttentionPrefix& prefix) {
  const int64_t B = hidden.size(0), T = hidden.size(1), D = hidden.size(2);
  auto heads = [&](const at::Tensor& t) {
    return t.view({t.size(0), t.size(1), n_head_, head_dim_}).permute({0, 2, 1, 3});
  };
  auto qkv = c_attn->forward(hidden).split(D, /*dim=*/2);
  at::Tensor q = heads(qkv[0]);
  auto [k, v] = nn::with_past(prefix, heads(qkv[1]), heads(qkv[2]));
  const int64_t P = k.size(2) - T;  // cached positions and prefix keys

  // Query i sees the prefix and tokens up to itself (HF's causal window after P cached tokens).
  at::Tensor causal = torch::ones({T, P + T}, q.options().dtype(torch::kBool)).tril(P);
  const double min_value = nn::lowest_value(q.scalar_type());
  nn::AttentionOptions fused;
  fused.score_divisor = std::sqrt(static_cast<double>(head_dim_));
  fused.dropout = attn_pdrop_;
  fused.training = is_training();
  at::Tensor context;
  if (scale_ && !scale_by_layer_ && nn::fused_attention_applies(fused, head_dim_)) {
    at::Tensor mask = torch::where(causal, torch::zeros({}, q.options()), torch::full({}, min_value, q.options()));
    context = nn::attention(q, k, v, additive_mask.defined() ? mask + additive_mask : mask, fused);
  } else {
    // The reference order of operations: scores, scale, causal fill with the dtype's min, add
    // the padding mask, softmax. Keeping it makes padded rows agree with HF too.
    at::Tensor scores = torch::matmul(q, k.transpose(-1, -2));
    if (scale_) scores = scores / std::sqrt(static_cast<double>(head_dim_));
    if (scale_by_layer_) scores = scores / static_cast<double>(layer_idx_ + 1);
    scores = torch::where(causal, scores, torch::full({}, min_value, scores.options()));
    if (additive_mask.defined()) scores = scores + additive_mask;
    at::Tensor probs = torch::softmax(scores, -1).to(v.scalar_type());
    probs = F::dropout(probs, F::DropoutFuncOptions().p(attn_pdrop_).training(is_training()));
    context = torch::matmul(probs, v);
  }
  if (adapters->any_active()) {
    nn::AttentionView view;
    view.queries = q;
    view.score_divisor = (scale_ ? std::sqrt(static_cast<double>(head_dim_)) : 1.0) *
                         (scale_by_layer_ ? static_cast<double>(layer_idx_ + 1) : 1.0);
    view.key_value = [&](const at::Tensor& x) {
      auto kv = c_attn->forward(x).split(D, 2);
      return std::make_pair(heads(kv[1]), heads(kv[2]));
    };
    context = adapters->apply(context, view);
  }
  at::Tensor out = c_proj->forward(context.permute({0, 2, 1, 3}).reshape({B, T, D}));
  return F::dropout(out, F::DropoutFuncOptions().p(resid_pdrop_).training(is_training()));
}

GPT2MLPImpl::GPT2MLPImpl(const GPT2Config& config)
    : act_(nn::activation(config.activation_function)), resid_pdrop_(config.resid_pdrop) {
  c_fc = register_module("c_fc", nn::AdaptableLinear(nn::AdaptableLinearOptions(config.n_embd, config.inner_dim()).fan_in_fan_out(true)));
  c_proj = register_module("c_proj", nn::AdaptableLinear(nn::AdaptableLinearOptions(config.inner_dim(), config.n_embd).fan_in_fan_out(true)));
}

at::Tensor GPT2MLPImpl::forward(const at::Tensor& x) {
  at::Tensor h = c_proj->forward(act_(c_fc->forward(x)));
  return F::dropout(h, F::DropoutFuncOptions().p(resid_pdrop_).training(is_training()));
}

GPT2BlockImpl::GPT2BlockImpl(const GPT2Config& config, int64_t layer_idx) {
  auto ln = [&] {
    return nn::LayerNorm(config.n_embd, config.layer_norm_epsilon);
  };
  ln_1 = register_module("ln_1", ln());
  attn = register_module("attn", GPT2Attention(config, layer_idx));
  ln_2 = register_module("ln_2", ln());
  mlp = register_module("mlp", GPT2MLP(config));
  adapters = register_module("adapters", nn::BlockAdapters());
}

at::Tensor GPT2BlockImpl::forward(const at::Tensor& hidden, const at::Tensor& additive_mask,
                                  const nn::AttentionPrefix& prefix) {
  at::Tensor a = ln_1->forward(hidden);
  at::Tensor h = hidden + adapters->apply("attention", a, attn->forward(a, additive_mask, prefix));
  at::Tensor f = ln_2->forward(h);
  return h + adapters->apply("ffn", f, mlp->forward(f));
}

GPT2ModelImpl::GPT2ModelImpl(const GPT2Config& config) : config_(config) {
  wte = register_module("wte", torch::nn::Embedding(config.vocab_size, config.n_embd));
  wpe = register_module("wpe", torch::nn::Embedding(config.n_positions, config.n_embd));
  h = register_module("h", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.n_layer; ++i) h->push_back(GPT2Block(config, i));
  ln_f = register_module(
      "ln_f", nn::LayerNorm(config.n_embd, config.layer_norm_epsilon));
}

ModelOutput GPT2ModelImpl::forward(const ModelInputs& inputs) {
  const bool given = given_embedding_output(inputs, config_.geometry(), "gpt2");
  const at::Tensor& input_ids = inputs.input_ids;
  PEFT_CHECK(given || (input_ids.defined() && input_ids.dim() == 2), "gpt2",
             "input_ids must be a [batch, seq] tensor, found {}", input_ids.defined() ? c10::str(input_ids.sizes()) : "none");
  PEFT_CHECK(!inputs.pixel_values.defined(), "gpt2", "pixel_values given to a text model");
  const bool ckpt = nn::checkpointing_applies(checkpoint_blocks, is_training());
  check_cache_use(inputs, /*decoder=*/true, ckpt, "gpt2");
  const int64_t past = cached_positions(inputs);
  PromptLengths lengths;
  at::Tensor hidden;
  if (given) {
    hidden = inputs.embedding_output;
  } else {
    const int64_t B = input_ids.size(0), T = input_ids.size(1);
    lengths = check_prompt_inputs(inputs, B, config_.geometry(), "gpt2");
    const int64_t S = lengths.virtual_tokens + T;  // positions in the sequence
    // Given positions are checked themselves: the keys of a padded batch may outnumber them.
    const int64_t last = inputs.position_ids.defined() && inputs.position_ids.numel() > 0
                             ? inputs.position_ids.max().item<int64_t>() + 1
                             : past + lengths.prefix + S;
    PEFT_CHECK(last <= config_.n_positions, "gpt2", "sequence length {} exceeds n_positions {}", last,
               config_.n_positions);
    const at::Tensor positions =
        decoder_positions(inputs, B, lengths.virtual_tokens, T, past + lengths.prefix, input_ids.device(), "gpt2");
    hidden = prepend_prompt(inputs.prompt_embeds, wte->forward(input_ids)) + wpe->forward(positions);
    // GPT-2 embeds segment ids with the token embedding (HF does the same).
    if (inputs.token_type_ids.defined())
      hidden = hidden + wte->forward(prepend_constant(inputs.token_type_ids.to(torch::kLong), lengths.virtual_tokens, 0));
    hidden = F::dropout(hidden, F::DropoutFuncOptions().p(config_.embd_pdrop).training(is_training()));
  }

  if (inputs.attention_mask.defined())
    PEFT_CHECK(given || inputs.attention_mask.sizes() == input_ids.sizes(), "gpt2",
               "attention_mask has shape {}, expected {} like input_ids", c10::str(inputs.attention_mask.sizes()),
               c10::str(input_ids.sizes()));
  const at::Tensor key_mask =
      decoder_key_mask(inputs, hidden.size(0), lengths.prefix + lengths.virtual_tokens, hidden.size(1) - lengths.virtual_tokens,
                       static_cast<int64_t>(h->size()));
  const at::Tensor additive = key_mask.defined() ? nn::additive_padding_mask(key_mask, hidden.scalar_type()) : at::Tensor();
  ModelOutput out;
  if (inputs.output_hidden_states) out.hidden_states.push_back(hidden);
  const int64_t L = static_cast<int64_t>(h->size());
  const auto params = ckpt ? nn::tensors_requiring_grad(parameters()) : std::vector<at::Tensor>{};
  for (int64_t i = 0; i < L; ++i) {
    auto block = h->ptr<GPT2BlockImpl>(i);
    const auto prefix = layer_prefix(inputs, i);
    const at::Tensor x = tap_stream(inputs, i, hidden);
    hidden = ckpt ? nn::checkpointed([block, additive](const std::vector<at::Tensor>& in) {
                      return block->forward(in[0], additive, {in[1], in[2]});
                    }, {x, prefix.key, prefix.value}, params)
                  : block->forward(x, additive, prefix);
    if (inputs.output_hidden_states && i + 1 < L) out.hidden_states.push_back(hidden);
  }
  out.last_hidden_state = tap_final(inputs, ln_f->forward(tap_stream(inputs, L, hidden)));
  if (inputs.output_hidden_states) out.hidden_states.push_back(out.last_hidden_state);
  return out;
}

// ---- task models -------------------------------------------------------------

nlohmann::json GPT2FamilyModel::config_json() const {
  auto j = config_.to_json();
  j["architectures"] = nlohmann::json::array({architecture()});
  return j;
}

ModelGeometry GPT2FamilyModel::geometry() const { return config_.geometry(); }

void GPT2FamilyModel::init_weights() {
  torch::NoGradGuard no_grad;
  const double std = config_.initializer_range;
  init_standard(*this, std);
  // GPT-2's scaled init of the residual projections (HF _init_weights).
  for (auto& item : named_parameters())
    if (core::ends_with(item.key(), "c_proj.weight"))
      item.value().normal_(0.0, std / std::sqrt(2.0 * static_cast<double>(config_.n_layer)));
}

bool GPT2FamilyModel::ignorable_checkpoint_key(const std::string& key) const {
  // Causal-mask buffers some older checkpoints carry (HF ignores them on load too).
  return core::ends_with(key, ".attn.bias") || core::ends_with(key, ".attn.masked_bias");
}

GPT2ForFeatureExtraction::GPT2ForFeatureExtraction(const GPT2Config& config) : GPT2FamilyModel(config) {
  config_.validate();
  backbone_ = GPT2Model(config_);
  register_module("wte", backbone_->wte);
  register_module("wpe", backbone_->wpe);
  register_module("h", backbone_->h);
  register_module("ln_f", backbone_->ln_f);
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

ModelOutput GPT2ForFeatureExtraction::forward(const ModelInputs& inputs) {
  PEFT_CHECK(!inputs.labels.defined(), "gpt2", "labels given to GPT2Model, which has no head; load a task model");
  return backbone_->forward(inputs);
}

GPT2LMHeadModel::GPT2LMHeadModel(const GPT2Config& config) : GPT2FamilyModel(config) {
  config_.validate();
  transformer = register_module("transformer", GPT2Model(config_));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", nn::AdaptableLinear(nn::AdaptableLinearOptions(config_.n_embd, config_.vocab_size).bias(false)));
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

std::map<std::string, std::string> GPT2LMHeadModel::tied_weights() const {
  if (!config_.tie_word_embeddings) return {};
  return {{"lm_head.weight", "transformer.wte.weight"}};
}

ModelOutput GPT2LMHeadModel::forward(const ModelInputs& inputs) {
  ModelOutput out = transformer->forward(inputs);
  out.logits = lm_head ? lm_head->forward(out.last_hidden_state)
                       : F::linear(out.last_hidden_state, transformer->wte->weight);
  if (inputs.labels.defined()) out.loss = causal_lm_loss(out.logits, lm_labels(inputs), inputs.per_example_loss);
  return out;
}

GPT2ForSequenceClassification::GPT2ForSequenceClassification(const GPT2Config& config) : GPT2FamilyModel(config) {
  config_.validate();
  transformer = register_module("transformer", GPT2Model(config_));
  score = register_module("score", nn::AdaptableLinear(nn::AdaptableLinearOptions(config_.n_embd, config_.head.num_labels).bias(false)));
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

ModelOutput GPT2ForSequenceClassification::forward(const ModelInputs& inputs) {
  ModelOutput out = transformer->forward(inputs);
  at::Tensor last = last_token_index(inputs.input_ids, inputs.attention_mask, config_.head.pad_token_id, "gpt2") +
                    virtual_tokens(inputs);
  out.logits = gather_rows(score->forward(out.last_hidden_state), last);
  if (inputs.labels.defined()) out.loss = classification_loss(out.logits, inputs.labels, config_.head, inputs.per_example_loss);
  return out;
}

}  // namespace peft::models
