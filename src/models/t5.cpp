#include "peft/models/t5.h"

#include <cmath>

#include <torch/torch.h>

#include "init_weights.h"
#include "prompt_inputs.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/strings.h"
#include "peft/models/heads.h"
#include "peft/nn/attention.h"
#include "peft/nn/attention_mask.h"
#include "peft/nn/checkpoint.h"

namespace peft::models {
namespace F = torch::nn::functional;
namespace {
constexpr const char* kC = "t5";

at::Tensor drop(const at::Tensor& x, double p, bool training) {
  return p > 0 && training ? F::dropout(x, F::DropoutFuncOptions().p(p).training(true)) : x;
}

/// A decoding step may leave out the encoder's inputs: the cache holds its keys.
bool decoder_step_only(const ModelInputs& in) {
  return !in.input_ids.defined() && !in.embedding_output.defined() && in.kv_cache && in.kv_cache->has_cross_attention();
}

void check_t5_inputs(const ModelInputs& in, const ModelGeometry& geometry) {
  // The shared check of a given embedding output (its width, and input_ids / attention_mask like it).
  const bool given = given_embedding_output(in, geometry, kC);
  PEFT_CHECK((in.input_ids.defined() && in.input_ids.dim() == 2) || given || decoder_step_only(in), kC,
             "input_ids must be a [batch, seq] tensor, found {} (only embedding_output, or a decoding step over a cache "
             "that holds the encoder's keys, may stand in for it)",
             in.input_ids.defined() ? c10::str(in.input_ids.sizes()) : "none");
  PEFT_CHECK(!in.pixel_values.defined() && !in.token_type_ids.defined() && !in.position_ids.defined(), kC,
             "pixel_values / token_type_ids / position_ids given to a T5 model (it takes input_ids, attention_mask, "
             "decoder_input_ids, decoder_attention_mask and labels)");
  PEFT_CHECK(!given || !in.encoder_outputs.defined(), kC, "embedding_output cannot be combined with encoder_outputs");
  const at::Tensor& d = in.decoder_embedding_output;
  if (d.defined()) {
    PEFT_CHECK(d.dim() == 3 && d.size(2) == geometry.hidden_size, kC,
               "decoder_embedding_output has shape {}, expected [batch, target_len, {}] (d_model)", c10::str(d.sizes()),
               geometry.hidden_size);
    for (const at::Tensor* t : {&in.decoder_input_ids, &in.labels})
      PEFT_CHECK(!t->defined() || (t->dim() == 2 && t->size(0) == d.size(0) && t->size(1) == d.size(1)), kC,
                 "{} has shape {}, expected [{}, {}] like decoder_embedding_output",
                 t == &in.labels ? "labels" : "decoder_input_ids", c10::str(t->sizes()), d.size(0), d.size(1));
  }
  if (in.attention_mask.defined() && !given)
    PEFT_CHECK(in.input_ids.defined() && in.attention_mask.sizes() == in.input_ids.sizes(), kC,
               "attention_mask has shape {}, expected {} like input_ids", c10::str(in.attention_mask.sizes()),
               in.input_ids.defined() ? c10::str(in.input_ids.sizes()) : "none");
}
}  // namespace

// ---- config ------------------------------------------------------------------

std::string T5Config::activation() const {
  if (feed_forward_proj == "gated-gelu") return "gelu_new";
  const auto dash = feed_forward_proj.rfind('-');
  return dash == std::string::npos ? feed_forward_proj : feed_forward_proj.substr(dash + 1);
}

bool T5Config::gated() const { return feed_forward_proj.rfind("gated-", 0) == 0; }

ModelGeometry T5Config::geometry() const {
  const int64_t positions = original.is_object() && original.contains("n_positions") && original["n_positions"].is_number_integer()
                                ? original["n_positions"].get<int64_t>()
                                : 512;
  return {num_layers, d_model, num_heads, num_heads, d_kv, vocab_size, d_ff, gated() ? 3 : 2, positions, true,
          num_decoder_layers};
}

void T5Config::validate() const {
  PEFT_CHECK(vocab_size > 0 && d_model > 0 && d_kv > 0 && d_ff > 0 && num_layers > 0 && num_decoder_layers > 0 &&
                 num_heads > 0,
             kC, "config.json: vocab_size, d_model, d_kv, d_ff, num_layers, num_decoder_layers and num_heads must be positive");
  PEFT_CHECK(relative_attention_num_buckets >= 2 && relative_attention_max_distance > relative_attention_num_buckets / 4, kC,
             "config.json: relative_attention_num_buckets must be >= 2 and relative_attention_max_distance above a quarter "
             "of it, found {} and {}",
             relative_attention_num_buckets, relative_attention_max_distance);
  const auto dashes = std::count(feed_forward_proj.begin(), feed_forward_proj.end(), '-');
  PEFT_CHECK(dashes == 0 || (dashes == 1 && gated()), kC,
             "config.json: feed_forward_proj must be an activation or gated-<activation> (e.g. relu, gated-gelu), found '{}'",
             feed_forward_proj);
  PEFT_CHECK(dropout_rate >= 0 && dropout_rate < 1, kC, "config.json: dropout_rate must be in [0, 1), found {}", dropout_rate);
  nn::activation(activation());
}

T5Config T5Config::from_json(const nlohmann::json& j) {
  T5Config c;
  const std::string w = "config.json";
  using core::get_or;
  c.vocab_size = get_or<int64_t>(j, "vocab_size", c.vocab_size, kC, w);
  c.d_model = get_or<int64_t>(j, "d_model", c.d_model, kC, w);
  c.d_kv = get_or<int64_t>(j, "d_kv", c.d_kv, kC, w);
  c.d_ff = get_or<int64_t>(j, "d_ff", c.d_ff, kC, w);
  c.num_layers = get_or<int64_t>(j, "num_layers", c.num_layers, kC, w);
  c.num_decoder_layers = c.num_layers;
  if (j.contains("num_decoder_layers") && !j["num_decoder_layers"].is_null())
    c.num_decoder_layers = get_or<int64_t>(j, "num_decoder_layers", c.num_decoder_layers, kC, w);
  c.num_heads = get_or<int64_t>(j, "num_heads", c.num_heads, kC, w);
  c.relative_attention_num_buckets = get_or<int64_t>(j, "relative_attention_num_buckets", c.relative_attention_num_buckets, kC, w);
  c.relative_attention_max_distance =
      get_or<int64_t>(j, "relative_attention_max_distance", c.relative_attention_max_distance, kC, w);
  c.dropout_rate = get_or<double>(j, "dropout_rate", c.dropout_rate, kC, w);
  c.layer_norm_epsilon = get_or<double>(j, "layer_norm_epsilon", c.layer_norm_epsilon, kC, w);
  c.initializer_factor = get_or<double>(j, "initializer_factor", c.initializer_factor, kC, w);
  c.feed_forward_proj = get_or<std::string>(j, "feed_forward_proj", c.feed_forward_proj, kC, w);
  c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", c.tie_word_embeddings, kC, w);
  c.decoder_start_token_id = get_or<int64_t>(j, "decoder_start_token_id", c.decoder_start_token_id, kC, w);
  c.pad_token_id = get_or<int64_t>(j, "pad_token_id", c.pad_token_id, kC, w);
  c.eos_token_id = get_or<int64_t>(j, "eos_token_id", c.eos_token_id, kC, w);
  c.original = j;
  c.validate();
  return c;
}

nlohmann::json T5Config::to_json() const {
  nlohmann::json j = original.is_object() ? original : nlohmann::json::object();
  j["model_type"] = "t5";
  j["vocab_size"] = vocab_size;
  j["d_model"] = d_model;
  j["d_kv"] = d_kv;
  j["d_ff"] = d_ff;
  j["num_layers"] = num_layers;
  j["num_decoder_layers"] = num_decoder_layers;
  j["num_heads"] = num_heads;
  j["relative_attention_num_buckets"] = relative_attention_num_buckets;
  j["relative_attention_max_distance"] = relative_attention_max_distance;
  j["dropout_rate"] = dropout_rate;
  j["layer_norm_epsilon"] = layer_norm_epsilon;
  j["initializer_factor"] = initializer_factor;
  j["feed_forward_proj"] = feed_forward_proj;
  j["dense_act_fn"] = activation();
  j["is_gated_act"] = gated();
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["decoder_start_token_id"] = decoder_start_token_id;
  j["pad_token_id"] = pad_token_id;
  j["eos_token_id"] = eos_token_id;
  j["is_encoder_decoder"] = true;
  return j;
}

// ---- attention ---------------------------------------------------------------

at::Tensor t5_relative_position_bucket(const at::Tensor& relative_position, bool bidirectional, int64_t num_buckets,
                                       int64_t max_distance) {
  at::Tensor buckets = torch::zeros_like(relative_position);
  at::Tensor distance;
  if (bidirectional) {
    num_buckets /= 2;
    buckets = buckets + (relative_position > 0).to(torch::kLong) * num_buckets;
    distance = relative_position.abs();
  } else {
    distance = -torch::min(relative_position, torch::zeros_like(relative_position));  // earlier keys only
  }
  // Half the buckets are exact distances, the rest grow logarithmically up to max_distance.
  const int64_t max_exact = num_buckets / 2;
  at::Tensor is_small = distance < max_exact;
  at::Tensor large = max_exact + (torch::log(distance.to(torch::kFloat) / max_exact) /
                                  std::log(static_cast<double>(max_distance) / max_exact) * (num_buckets - max_exact))
                                     .to(torch::kLong);
  large = torch::min(large, torch::full_like(large, num_buckets - 1));
  return buckets + torch::where(is_small, distance, large);
}

T5AttentionImpl::T5AttentionImpl(const T5Config& config, bool has_relative_attention_bias, bool causal, bool cross)
    : cross_(cross),
      heads_(config.num_heads),
      d_kv_(config.d_kv),
      buckets_(config.relative_attention_num_buckets),
      max_distance_(config.relative_attention_max_distance),
      causal_(causal),
      dropout_(config.dropout_rate) {
  const int64_t D = config.d_model, inner = heads_ * d_kv_;
  q = register_module("q", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, inner).bias(false)));
  k = register_module("k", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, inner).bias(false)));
  v = register_module("v", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, inner).bias(false)));
  o = register_module("o", nn::AdaptableLinear(nn::AdaptableLinearOptions(inner, D).bias(false)));
  if (has_relative_attention_bias)
    relative_attention_bias = register_module("relative_attention_bias", torch::nn::Embedding(buckets_, heads_));
}

at::Tensor T5AttentionImpl::compute_bias(int64_t query_len, int64_t key_len, c10::Device device, int64_t first_query) {
  PEFT_CHECK(relative_attention_bias.get() != nullptr, kC, "compute_bias on an attention layer without a relative bias");
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  at::Tensor relative = torch::arange(key_len, opts).unsqueeze(0) -
                        torch::arange(first_query, first_query + query_len, opts).unsqueeze(1);
  at::Tensor b = t5_relative_position_bucket(relative, !causal_, buckets_, max_distance_);
  return relative_attention_bias->forward(b).permute({2, 0, 1}).unsqueeze(0);  // [1, heads, q, k]
}

at::Tensor T5AttentionImpl::forward(const at::Tensor& hidden, const at::Tensor& key_value_states,
                                    const at::Tensor& position_bias, nn::KVCache* cache, size_t layer,
                                    const nn::AttentionPrefix& prefix) {
  const bool cross = cross_;
  const at::Tensor& source = cross ? key_value_states : hidden;
  at::Tensor qh = nn::split_heads(q->forward(hidden), heads_, d_kv_);
  auto project = [&] {
    PEFT_CHECK(source.defined(), kC, "cross-attention without the encoder's output (and no cache holding its keys)");
    return std::make_pair(nn::split_heads(k->forward(source), heads_, d_kv_), nn::split_heads(v->forward(source), heads_, d_kv_));
  };
  at::Tensor kh, vh;
  if (cache && cross) {
    std::tie(kh, vh) = cache->cross_attention(layer, project);  // the encoder's keys, computed on the first step
  } else {
    std::tie(kh, vh) = project();
    if (!cross && prefix.key.defined()) {
      kh = nn::with_prefix(prefix.key, kh);
      vh = nn::with_prefix(prefix.value, vh);
    }
    if (cache) std::tie(kh, vh) = cache->append(layer, kh, vh);
  }
  nn::AttentionOptions opts;  // T5 does not scale the scores (its initialization accounts for it)
  opts.score_divisor = 1.0;
  opts.dropout = dropout_;
  opts.training = is_training();
  opts.softmax_in_float32 = true;
  return o->forward(nn::merge_heads(nn::attention(qh, kh, vh, position_bias, opts)));
}

T5LayerSelfAttentionImpl::T5LayerSelfAttentionImpl(const T5Config& config, bool has_relative_attention_bias, bool causal) {
  SelfAttention = register_module("SelfAttention", T5Attention(config, has_relative_attention_bias, causal));
  layer_norm = register_module("layer_norm", nn::RMSNorm(config.d_model, config.layer_norm_epsilon));
}

T5LayerCrossAttentionImpl::T5LayerCrossAttentionImpl(const T5Config& config) {
  EncDecAttention = register_module("EncDecAttention", T5Attention(config, false, false, /*cross=*/true));
  layer_norm = register_module("layer_norm", nn::RMSNorm(config.d_model, config.layer_norm_epsilon));
}

// ---- feed-forward ------------------------------------------------------------

T5DenseImpl::T5DenseImpl(const T5Config& config) : act_(nn::activation(config.activation())), dropout_(config.dropout_rate) {
  const int64_t D = config.d_model, I = config.d_ff;
  if (config.gated()) {
    wi_0 = register_module("wi_0", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, I).bias(false)));
    wi_1 = register_module("wi_1", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, I).bias(false)));
  } else {
    wi = register_module("wi", nn::AdaptableLinear(nn::AdaptableLinearOptions(D, I).bias(false)));
  }
  wo = register_module("wo", nn::AdaptableLinear(nn::AdaptableLinearOptions(I, D).bias(false)));
}

at::Tensor T5DenseImpl::forward(const at::Tensor& x) {
  at::Tensor h = wi ? act_(wi->forward(x)) : act_(wi_0->forward(x)) * wi_1->forward(x);
  return wo->forward(drop(h, dropout_, is_training()));
}

T5LayerFFImpl::T5LayerFFImpl(const T5Config& config) {
  DenseReluDense = register_module("DenseReluDense", T5Dense(config));
  layer_norm = register_module("layer_norm", nn::RMSNorm(config.d_model, config.layer_norm_epsilon));
}

// ---- blocks and stacks ---------------------------------------------------------

T5BlockImpl::T5BlockImpl(const T5Config& config, bool is_decoder, bool has_relative_attention_bias)
    : is_decoder_(is_decoder), dropout_(config.dropout_rate) {
  layer = register_module("layer", torch::nn::ModuleList());
  layer->push_back(T5LayerSelfAttention(config, has_relative_attention_bias, is_decoder));
  if (is_decoder) layer->push_back(T5LayerCrossAttention(config));
  layer->push_back(T5LayerFF(config));
  adapters = register_module("adapters", nn::BlockAdapters());
  if (is_decoder) adapters->offer_cross_attention();
}

at::Tensor T5BlockImpl::forward(const at::Tensor& hidden, const at::Tensor& self_bias, const at::Tensor& encoder_hidden,
                                const at::Tensor& cross_bias, nn::KVCache* cache, size_t index,
                                const nn::AttentionPrefix& prefix) {
  const bool train = is_training();
  auto self = layer->ptr<T5LayerSelfAttentionImpl>(0);
  at::Tensor normed = self->layer_norm->forward(hidden);
  at::Tensor h = hidden + adapters->apply("attention", normed,
                                          drop(self->SelfAttention->forward(normed, {}, self_bias, cache, index, prefix), dropout_, train));
  if (is_decoder_) {
    auto cross = layer->ptr<T5LayerCrossAttentionImpl>(1);
    const at::Tensor normed_cross = cross->layer_norm->forward(h);
    h = h + adapters->apply("cross_attention", normed_cross,
                            drop(cross->EncDecAttention->forward(normed_cross, encoder_hidden, cross_bias, cache, index),
                                 dropout_, train));
  }
  auto ff = layer->ptr<T5LayerFFImpl>(is_decoder_ ? 2 : 1);
  normed = ff->layer_norm->forward(h);
  return h + adapters->apply("ffn", normed, drop(ff->DenseReluDense->forward(normed), dropout_, train));
}

T5StackImpl::T5StackImpl(const T5Config& config, bool is_decoder) : is_decoder_(is_decoder), dropout_(config.dropout_rate) {
  block = register_module("block", torch::nn::ModuleList());
  const int64_t n = is_decoder ? config.num_decoder_layers : config.num_layers;
  for (int64_t i = 0; i < n; ++i) block->push_back(T5Block(config, is_decoder, /*has_relative_attention_bias=*/i == 0));
  final_layer_norm = register_module("final_layer_norm", nn::RMSNorm(config.d_model, config.layer_norm_epsilon));
}

T5StackOutput T5StackImpl::forward(const at::Tensor& embeddings, const at::Tensor& attention_mask,
                                   const at::Tensor& encoder_hidden, const at::Tensor& encoder_mask,
                                   bool output_hidden_states, nn::KVCache* cache,
                                   const std::vector<nn::AttentionPrefix>& prefix, const torch::nn::Module* owner,
                                   const T5StackTaps& taps) {
  const int64_t B = embeddings.size(0), T = embeddings.size(1);
  const auto dtype = embeddings.scalar_type();
  const auto device = embeddings.device();
  PEFT_CHECK(!cache || is_decoder_, kC, "a key/value cache is for the decoder (the encoder runs once, uncached)");
  PEFT_CHECK(prefix.empty() || (is_decoder_ && prefix.size() == block->size()), kC,
             "an attention prefix for {} layers given to a {}-layer {}", prefix.size(), block->size(),
             is_decoder_ ? "decoder" : "encoder");
  const int64_t p = prefix.empty() ? 0 : prefix.front().length();
  for (const auto& layer_prefix : prefix)
    PEFT_CHECK(layer_prefix.length() == p && layer_prefix.key.size(0) == B && layer_prefix.value.defined() &&
                   layer_prefix.value.sizes() == layer_prefix.key.sizes(),
               kC, "every layer's prefix must hold [{}, heads, {}, d_kv] keys and values", B, p);
  const int64_t past = (cache ? cache->length() : 0) + p;  // keys before this forward's tokens
  at::Tensor key_mask = attention_mask.defined() ? attention_mask.to(device) : at::Tensor();
  if (key_mask.defined() && p > 0) key_mask = torch::cat({torch::ones({B, p}, key_mask.options()), key_mask}, 1);
  if (cache) key_mask = cache->extend_key_mask(key_mask, B, p + T, block->size());
  at::Tensor mask = is_decoder_ ? nn::causal_additive_mask(key_mask, B, T, past + T, dtype, device)
                                : (attention_mask.defined() ? nn::additive_padding_mask(attention_mask.to(device), dtype)
                                                            : at::Tensor());
  // The first layer's relative bias, with the mask, serves every layer of the stack (queries
  // numbered after the cached and prefix keys).
  at::Tensor self_bias = block->ptr<T5BlockImpl>(0)->layer->ptr<T5LayerSelfAttentionImpl>(0)->SelfAttention->compute_bias(
      T, past + T, device, past).to(dtype);
  if (mask.defined()) self_bias = self_bias + mask;
  at::Tensor cross_bias;
  // With a cache, its rows' own encoder masks (rows may have joined from other batches).
  const at::Tensor source_mask = is_decoder_ && cache ? cache->cross_attention_mask(encoder_mask) : encoder_mask;
  if (is_decoder_ && source_mask.defined()) cross_bias = nn::additive_padding_mask(source_mask.to(device), dtype);

  T5StackOutput out;
  at::Tensor hidden = taps.embeddings_given ? embeddings : drop(embeddings, dropout_, is_training());
  auto tap = [&](size_t i, const at::Tensor& h) { return taps.hook ? taps.hook(taps.first + static_cast<int64_t>(i), h) : h; };
  const bool ckpt = nn::checkpointing_applies(checkpoint_blocks, is_training());
  PEFT_CHECK(!(ckpt && cache), kC, "a key/value cache with gradient checkpointing while training");
  const auto params = ckpt ? nn::tensors_requiring_grad(owner ? owner->parameters() : parameters()) : std::vector<at::Tensor>{};
  for (size_t i = 0; i < block->size(); ++i) {
    if (output_hidden_states) out.hidden_states.push_back(hidden);
    auto b = block->ptr<T5BlockImpl>(i);
    const nn::AttentionPrefix none, &layer_prefix = prefix.empty() ? none : prefix[i];
    hidden = tap(i, hidden);
    // The biases go in as inputs: a trained relative bias (a side network's) has a graph that
    // every block's recomputation must reach through the checkpoint, not consume on its own.
    hidden = ckpt ? nn::checkpointed([b](const std::vector<at::Tensor>& in) {
                      return b->forward(in[0], in[4], in[1], in[5], nullptr, 0, {in[2], in[3]});
                    }, {hidden, encoder_hidden, layer_prefix.key, layer_prefix.value, self_bias, cross_bias}, params)
                  : b->forward(hidden, self_bias, encoder_hidden, cross_bias, cache, i, layer_prefix);
  }
  out.last_hidden_state = drop(final_layer_norm->forward(tap(block->size(), hidden)), dropout_, is_training());
  if (output_hidden_states) out.hidden_states.push_back(out.last_hidden_state);
  return out;
}

// ---- models ------------------------------------------------------------------

T5FamilyModel::T5FamilyModel(const T5Config& config, bool with_decoder) : config_(config) {
  config_.validate();
  shared = register_module("shared", torch::nn::Embedding(config_.vocab_size, config_.d_model));
  encoder = register_module("encoder", T5Stack(config_, false));
  if (with_decoder) decoder = register_module("decoder", T5Stack(config_, true));
}

nlohmann::json T5FamilyModel::config_json() const {
  auto j = config_.to_json();
  j["architectures"] = nlohmann::json::array({architecture()});
  return j;
}

std::map<std::string, std::string> T5FamilyModel::tied_weights() const {
  std::map<std::string, std::string> t = {{"encoder.embed_tokens.weight", "shared.weight"}};
  if (decoder) t["decoder.embed_tokens.weight"] = "shared.weight";
  if (decoder && config_.tie_word_embeddings) t["lm_head.weight"] = "shared.weight";
  return t;
}

bool T5FamilyModel::ignorable_checkpoint_key(const std::string& key) const {
  // An encoder-only model reads a full checkpoint's encoder (HF ignores the rest likewise).
  return !decoder && (core::is_under(key, "decoder") || core::is_under(key, "lm_head"));
}

void T5FamilyModel::init_weights() {
  // HF's T5 _init_weights: every scale follows from initializer_factor and the geometry.
  torch::NoGradGuard no_grad;
  const double f = config_.initializer_factor, D = static_cast<double>(config_.d_model);
  const double inner = static_cast<double>(config_.num_heads * config_.d_kv);
  shared->weight.normal_(0.0, f);
  for (auto& item : named_modules("", false)) {
    if (auto a = std::dynamic_pointer_cast<T5AttentionImpl>(item.value())) {
      a->q->weight.normal_(0.0, f / std::sqrt(D * static_cast<double>(config_.d_kv)));
      a->k->weight.normal_(0.0, f / std::sqrt(D));
      a->v->weight.normal_(0.0, f / std::sqrt(D));
      a->o->weight.normal_(0.0, f / std::sqrt(inner));
      if (a->relative_attention_bias) a->relative_attention_bias->weight.normal_(0.0, f / std::sqrt(D));
    } else if (auto d = std::dynamic_pointer_cast<T5DenseImpl>(item.value())) {
      for (auto* lin : {&d->wi, &d->wi_0, &d->wi_1})
        if (*lin) (*lin)->weight.normal_(0.0, f / std::sqrt(D));
      d->wo->weight.normal_(0.0, f / std::sqrt(static_cast<double>(config_.d_ff)));
    } else if (auto n = std::dynamic_pointer_cast<nn::RMSNormImpl>(item.value())) {
      n->weight.fill_(f);
    }
  }
}

at::Tensor T5FamilyModel::shift_right(const at::Tensor& labels) const {
  at::Tensor shifted = torch::full_like(labels, config_.decoder_start_token_id);
  shifted.slice(1, 1).copy_(labels.slice(1, 0, labels.size(1) - 1));
  return shifted.masked_fill(shifted == -100, config_.pad_token_id);
}

T5StackOutput T5FamilyModel::encode(const ModelInputs& inputs) {
  check_t5_inputs(inputs, config_.geometry());
  if (decoder_step_only(inputs)) {
    PEFT_CHECK(decoder && inputs.decoder_input_ids.defined() && !inputs.encoder_outputs.defined(), kC,
               "a decoding step without input_ids takes decoder_input_ids (and no encoder_outputs: the cache holds the "
               "encoder's keys)");
    return {};
  }
  const bool given = inputs.embedding_output.defined();
  const at::Tensor& first = given ? inputs.embedding_output : inputs.input_ids;
  const int64_t B = first.size(0), T = first.size(1);
  // Virtual tokens (prompt tuning) come first and are always attended.
  auto with_virtual = [&](int64_t n) {
    const at::Tensor& m = inputs.attention_mask;
    return !m.defined() || n == 0 ? m : torch::cat({torch::ones({B, n}, m.options()), m}, 1);
  };
  if (inputs.encoder_outputs.defined()) {
    const auto& e = inputs.encoder_outputs;
    PEFT_CHECK(e.dim() == 3 && e.size(0) == B && e.size(1) >= T && e.size(2) == config_.d_model, kC,
               "encoder_outputs have shape {}, expected [{}, {} (+ virtual tokens), {}] (the encoder's output for input_ids)",
               c10::str(e.sizes()), B, T, config_.d_model);
    PEFT_CHECK(!inputs.output_hidden_states, kC, "output_hidden_states with encoder_outputs (the encoder does not run)");
    return {e, {}, with_virtual(e.size(1) - T)};
  }
  at::Tensor embeddings = given ? inputs.embedding_output : shared->forward(inputs.input_ids);
  const int64_t p = inputs.prompt_embeds.defined() ? inputs.prompt_embeds.size(1) : 0;
  if (p > 0) {
    PEFT_CHECK(inputs.prompt_embeds.dim() == 3 && inputs.prompt_embeds.size(0) == B &&
                   inputs.prompt_embeds.size(2) == config_.d_model,
               kC, "prompt_embeds have shape {}, expected [{}, p, {}]", c10::str(inputs.prompt_embeds.sizes()), B,
               config_.d_model);
    embeddings = torch::cat({inputs.prompt_embeds.to(embeddings.scalar_type()), embeddings}, 1);
  }
  const at::Tensor mask = with_virtual(p);
  auto out = encoder->forward(embeddings, mask, {}, {}, inputs.output_hidden_states, nullptr, {}, this,
                              {inputs.stream_hook, 0, given});
  out.attention_mask = mask;
  return out;
}

T5StackOutput T5FamilyModel::decode(const ModelInputs& inputs, const T5StackOutput& encoded) {
  const at::Tensor& given = inputs.decoder_embedding_output;
  at::Tensor ids = inputs.decoder_input_ids;
  if (!given.defined()) {
    if (!ids.defined()) {
      PEFT_CHECK(inputs.labels.defined() && inputs.labels.dim() == 2, kC,
                 "give decoder_input_ids or labels ([batch, target_len]: the decoder's tokens are the labels shifted "
                 "right), or decoder_embedding_output; found labels {}",
                 inputs.labels.defined() ? c10::str(inputs.labels.sizes()) : "none");
      ids = shift_right(inputs.labels.to(shared->weight.device(), torch::kLong));
    }
    PEFT_CHECK(ids.dim() == 2, kC, "decoder_input_ids have shape {}, expected [batch, target_len]", c10::str(ids.sizes()));
  }
  const at::Tensor& first = given.defined() ? given : ids;
  const int64_t batch = inputs.input_ids.defined()          ? inputs.input_ids.size(0)
                        : inputs.embedding_output.defined() ? inputs.embedding_output.size(0)
                                                            : first.size(0);
  PEFT_CHECK(first.size(0) == batch, kC, "the decoder's inputs ({}) have shape {}, expected [{}, target_len]",
             given.defined()                        ? "decoder_embedding_output"
             : inputs.decoder_input_ids.defined() ? "decoder_input_ids"
                                                  : "labels",
             c10::str(first.sizes()), batch);
  if (inputs.decoder_attention_mask.defined())
    PEFT_CHECK(inputs.decoder_attention_mask.dim() == 2 && inputs.decoder_attention_mask.size(0) == first.size(0) &&
                   inputs.decoder_attention_mask.size(1) == first.size(1),
               kC, "decoder_attention_mask has shape {}, expected [{}, {}] like the decoder's inputs",
               c10::str(inputs.decoder_attention_mask.sizes()), first.size(0), first.size(1));
  // The decoder's taps follow the encoder's L_enc + 1 boundaries.
  return decoder->forward(given.defined() ? given : shared->forward(ids), inputs.decoder_attention_mask,
                          encoded.last_hidden_state, encoded.attention_mask, inputs.output_hidden_states,
                          inputs.kv_cache.get(), inputs.attention_prefix, this,
                          {inputs.stream_hook, config_.num_layers + 1, given.defined()});
}

T5ForConditionalGeneration::T5ForConditionalGeneration(const T5Config& config) : T5FamilyModel(config, true) {
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", nn::AdaptableLinear(nn::AdaptableLinearOptions(config_.d_model, config_.vocab_size).bias(false)));
  if (!weights_will_be_loaded()) {
    init_weights();
    if (lm_head) {
      torch::NoGradGuard no_grad;
      lm_head->weight.normal_(0.0, config_.initializer_factor);
    }
  }
  freeze_all(*this);
}

ModelOutput T5ForConditionalGeneration::forward(const ModelInputs& inputs) {
  auto enc = encode(inputs);
  auto dec = decode(inputs, enc);
  ModelOutput out;
  out.encoder_last_hidden_state = enc.last_hidden_state;
  out.encoder_hidden_states = std::move(enc.hidden_states);
  out.last_hidden_state = tap_final(inputs, dec.last_hidden_state);
  out.hidden_states = std::move(dec.hidden_states);
  // A tied head reads the decoder output scaled by d_model^-0.5 (Mesh TensorFlow's convention).
  out.logits = lm_head ? lm_head->forward(out.last_hidden_state)
                       : F::linear(out.last_hidden_state * std::pow(static_cast<double>(config_.d_model), -0.5), shared->weight);
  if (inputs.labels.defined()) out.loss = seq2seq_lm_loss(out.logits, inputs.labels, inputs.per_example_loss);
  return out;
}

T5Model::T5Model(const T5Config& config) : T5FamilyModel(config, true) {
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

T5EncoderModel::T5EncoderModel(const T5Config& config) : T5FamilyModel(config, false) {
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

ModelOutput T5Model::forward(const ModelInputs& inputs) {
  PEFT_CHECK(!inputs.labels.defined(), kC, "labels given to T5Model, which has no head; load T5ForConditionalGeneration");
  PEFT_CHECK(inputs.decoder_input_ids.defined() || inputs.decoder_embedding_output.defined(), kC,
             "T5Model needs decoder_input_ids (or decoder_embedding_output)");
  auto enc = encode(inputs);
  auto dec = decode(inputs, enc);
  ModelOutput out;
  out.encoder_last_hidden_state = enc.last_hidden_state;
  out.encoder_hidden_states = std::move(enc.hidden_states);
  out.last_hidden_state = tap_final(inputs, dec.last_hidden_state);
  out.hidden_states = std::move(dec.hidden_states);
  return out;
}

ModelOutput T5EncoderModel::forward(const ModelInputs& inputs) {
  PEFT_CHECK(!inputs.labels.defined() && !inputs.decoder_input_ids.defined() &&
                 !inputs.decoder_embedding_output.defined() && !inputs.kv_cache && inputs.attention_prefix.empty(),
             kC, "labels / decoder_input_ids / decoder_embedding_output / a key/value cache / an attention prefix given "
                 "to T5EncoderModel, which has no decoder (HF PEFT's prefix enters the decoder)");
  auto enc = encode(inputs);
  ModelOutput out;
  out.last_hidden_state = tap_final(inputs, enc.last_hidden_state);
  out.hidden_states = std::move(enc.hidden_states);
  return out;
}

}  // namespace peft::models
