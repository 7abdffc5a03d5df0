#include "peft/models/bert.h"

#include <torch/torch.h>

#include "encoder_fields.h"
#include "init_weights.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/strings.h"
#include "peft/nn/attention_mask.h"
#include "prompt_inputs.h"

namespace peft::models {
namespace F = torch::nn::functional;

// ---- config ------------------------------------------------------------------

void BertConfig::validate() const {
  const std::string c = model_type();
  PEFT_CHECK(vocab_size > 0 && hidden_size > 0 && num_hidden_layers > 0 && num_attention_heads > 0 &&
                 intermediate_size > 0 && max_position_embeddings > 0 && type_vocab_size > 0,
             c,
             "config.json: vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, "
             "max_position_embeddings and type_vocab_size must be positive");
  PEFT_CHECK(hidden_size % num_attention_heads == 0, c,
             "config.json: hidden_size ({}) must be divisible by num_attention_heads ({})", hidden_size,
             num_attention_heads);
  PEFT_CHECK(pad_token_id >= 0 && pad_token_id < vocab_size, c, "config.json: pad_token_id {} is outside the vocabulary",
             pad_token_id);
  PEFT_CHECK(!roberta || pad_token_id < max_position_embeddings, c,
             "config.json: pad_token_id {} is also RoBERTa's position padding_idx and must be < "
             "max_position_embeddings ({})",
             pad_token_id, max_position_embeddings);
  for (double p : {hidden_dropout_prob, attention_probs_dropout_prob})
    PEFT_CHECK(p >= 0.0 && p < 1.0, c, "config.json: dropout probabilities must be in [0, 1), found {}", p);
  nn::activation(hidden_act);
}

BertConfig BertConfig::from_json(const nlohmann::json& j) {
  BertConfig cfg;
  cfg.roberta = j.value("model_type", "") == "roberta";
  if (cfg.roberta) {  // RobertaConfig's own defaults
    cfg.vocab_size = 50265;
    cfg.pad_token_id = 1;
  }
  const std::string c = cfg.model_type(), w = "config.json";
  using core::get_or;
  cfg.vocab_size = get_or<int64_t>(j, "vocab_size", cfg.vocab_size, c, w);
  read_encoder_fields(j, cfg, c);
  cfg.max_position_embeddings = get_or<int64_t>(j, "max_position_embeddings", cfg.max_position_embeddings, c, w);
  cfg.type_vocab_size = get_or<int64_t>(j, "type_vocab_size", cfg.type_vocab_size, c, w);
  if (j.contains("pad_token_id") && !j["pad_token_id"].is_null())
    cfg.pad_token_id = get_or<int64_t>(j, "pad_token_id", cfg.pad_token_id, c, w);
  const auto pos_type = get_or<std::string>(j, "position_embedding_type", "absolute", c, w);
  PEFT_CHECK(pos_type == "absolute", c,
             "config.json: position_embedding_type '{}' is not supported (only \"absolute\")", pos_type);
  PEFT_CHECK(!get_or<bool>(j, "is_decoder", false, c, w) && !get_or<bool>(j, "add_cross_attention", false, c, w), c,
             "config.json: is_decoder / add_cross_attention (BERT as a decoder) is not supported");
  cfg.head = HeadConfig::from_json(j, c);
  cfg.original = j;
  cfg.validate();
  return cfg;
}

nlohmann::json BertConfig::to_json() const {
  nlohmann::json j = original.is_object() ? original : nlohmann::json::object();
  j["model_type"] = model_type();
  j["vocab_size"] = vocab_size;
  write_encoder_fields(j, *this);
  j["max_position_embeddings"] = max_position_embeddings;
  j["type_vocab_size"] = type_vocab_size;
  j["pad_token_id"] = pad_token_id;
  j["position_embedding_type"] = "absolute";
  head.to_json(j);
  return j;
}

// ---- modules -----------------------------------------------------------------

namespace {
nn::LayerNorm layer_norm(int64_t dim, double eps) {
  return nn::LayerNorm(dim, eps);
}
}  // namespace

BertEmbeddingsImpl::BertEmbeddingsImpl(const BertConfig& config) : config_(config) {
  const int64_t D = config.hidden_size;
  word_embeddings = register_module(
      "word_embeddings",
      torch::nn::Embedding(torch::nn::EmbeddingOptions(config.vocab_size, D).padding_idx(config.pad_token_id)));
  auto pos = torch::nn::EmbeddingOptions(config.max_position_embeddings, D);
  if (config.roberta) pos.padding_idx(config.pad_token_id);
  position_embeddings = register_module("position_embeddings", torch::nn::Embedding(pos));
  token_type_embeddings = register_module("token_type_embeddings", torch::nn::Embedding(config.type_vocab_size, D));
  LayerNorm = register_module("LayerNorm", layer_norm(D, config.layer_norm_eps));
}

at::Tensor BertEmbeddingsImpl::forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                                       const at::Tensor& position_ids, const at::Tensor& prompt_embeds, int64_t past) {
  const std::string c = config_.model_type();
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const int64_t P = prompt_embeds.defined() ? prompt_embeds.size(1) : 0, S = P + T;
  at::Tensor positions = position_ids;
  if (!positions.defined()) {
    if (config_.roberta) {
      // RoBERTa numbers real tokens (virtual ones count as real) from padding_idx + 1 (+ past);
      // pads keep padding_idx.
      at::Tensor real = prepend_constant(input_ids.ne(config_.pad_token_id).to(torch::kLong), P, 1);
      positions = (torch::cumsum(real, 1) + past) * real + config_.pad_token_id;
    } else {
      positions = default_positions(B, S, past, input_ids.device());
    }
  }
  // Default numbering needs no look at the values; explicit ids are checked where that is cheap.
  const int64_t last = config_.roberta ? config_.pad_token_id + past + S : past + S - 1;
  const int64_t max_pos = position_ids.defined() && !position_ids.is_cuda() && position_ids.numel()
                              ? position_ids.max().item<int64_t>()
                              : (position_ids.defined() ? 0 : last);
  PEFT_CHECK(max_pos < config_.max_position_embeddings, c,
             "position id {} exceeds max_position_embeddings {} (sequence length {})", max_pos,
             config_.max_position_embeddings, T);
  at::Tensor types = token_type_ids.defined() ? token_type_ids.to(torch::kLong) : torch::zeros_like(input_ids);
  PEFT_CHECK(types.sizes() == input_ids.sizes(), c, "token_type_ids has shape {}, expected {} like input_ids",
             c10::str(types.sizes()), c10::str(input_ids.sizes()));
  types = prepend_constant(types, P, 0);
  if (types.numel() && !types.is_cuda()) {
    const int64_t max_type = types.max().item<int64_t>(), min_type = types.min().item<int64_t>();
    PEFT_CHECK(min_type >= 0 && max_type < config_.type_vocab_size, c,
               "token_type_ids must be in [0, {}) (type_vocab_size), found {}..{}", config_.type_vocab_size, min_type,
               max_type);
  }
  at::Tensor emb = prepend_prompt(prompt_embeds, word_embeddings->forward(input_ids)) + token_type_embeddings->forward(types);
  emb = emb + position_embeddings->forward(positions);
  return torch::dropout(LayerNorm->forward(emb), config_.hidden_dropout_prob, is_training());
}

BertResidualOutputImpl::BertResidualOutputImpl(int64_t in, int64_t out, double eps, double dropout)
    : dropout_(dropout) {
  dense = register_module("dense", nn::AdaptableLinear(nn::AdaptableLinearOptions(in, out)));
  LayerNorm = register_module("LayerNorm", layer_norm(out, eps));
}

at::Tensor BertResidualOutputImpl::project(const at::Tensor& x) {
  return torch::dropout(dense->forward(x), dropout_, is_training());
}

at::Tensor BertResidualOutputImpl::finish(const at::Tensor& h, const at::Tensor& residual) {
  return LayerNorm->forward(h + residual);
}

BertAttentionImpl::BertAttentionImpl(const BertConfig& config) {
  self = register_module("self", nn::SelfAttention(config.hidden_size, config.num_attention_heads, true,
                                                   config.attention_probs_dropout_prob));
  output = register_module("output", BertResidualOutput(config.hidden_size, config.hidden_size, config.layer_norm_eps,
                                                        config.hidden_dropout_prob));
}

at::Tensor BertAttentionImpl::forward(const at::Tensor& hidden, const at::Tensor& additive_mask) {
  return output->forward(self->forward(hidden, additive_mask), hidden);
}

BertIntermediateImpl::BertIntermediateImpl(int64_t hidden, int64_t intermediate, const std::string& act)
    : act_(nn::activation(act)) {
  dense = register_module("dense", nn::AdaptableLinear(nn::AdaptableLinearOptions(hidden, intermediate)));
}

BertLayerImpl::BertLayerImpl(const BertConfig& config) {
  attention = register_module("attention", BertAttention(config));
  intermediate = register_module("intermediate",
                                 BertIntermediate(config.hidden_size, config.intermediate_size, config.hidden_act));
  output = register_module("output", BertResidualOutput(config.intermediate_size, config.hidden_size,
                                                        config.layer_norm_eps, config.hidden_dropout_prob));
  adapters = register_module("adapters", nn::BlockAdapters());
}

at::Tensor BertLayerImpl::forward(const at::Tensor& hidden, const at::Tensor& additive_mask,
                                  const nn::AttentionPrefix& prefix) {
  // Post-LN: adapters act on each sublayer's projected output, before its residual LayerNorm.
  at::Tensor a = attention->output->project(attention->self->forward(hidden, additive_mask, prefix));
  at::Tensor attended = attention->output->finish(adapters->apply("attention", hidden, a), hidden);
  at::Tensor f = output->project(intermediate->forward(attended));
  return output->finish(adapters->apply("ffn", attended, f), attended);
}

BertEncoderImpl::BertEncoderImpl(const BertConfig& config) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layer->push_back(BertLayer(config));
}

BertPoolerImpl::BertPoolerImpl(int64_t hidden) {
  dense = register_module("dense", nn::AdaptableLinear(nn::AdaptableLinearOptions(hidden, hidden)));
}

at::Tensor BertPoolerImpl::forward(const at::Tensor& hidden) {
  return torch::tanh(dense->forward(hidden.select(1, 0)));
}

BertModelImpl::BertModelImpl(const BertConfig& config, bool add_pooling_layer) : config_(config) {
  embeddings = register_module("embeddings", BertEmbeddings(config));
  encoder = register_module("encoder", BertEncoder(config));
  if (add_pooling_layer) pooler = register_module("pooler", BertPooler(config.hidden_size));
}

ModelOutput BertModelImpl::forward(const ModelInputs& inputs) {
  const std::string c = config_.model_type();
  const bool given = given_embedding_output(inputs, config_.geometry(), c);
  const at::Tensor& ids = inputs.input_ids;
  PEFT_CHECK(given || (ids.defined() && ids.dim() == 2), c, "input_ids must be a [batch, seq] tensor, found {}",
             ids.defined() ? c10::str(ids.sizes()) : "none");
  PEFT_CHECK(!inputs.pixel_values.defined(), c, "pixel_values given to a text model");
  check_cache_use(inputs, /*decoder=*/false, false, c);
  PromptLengths lengths;
  at::Tensor hidden;
  if (given) {
    hidden = inputs.embedding_output;
  } else {
    lengths = check_prompt_inputs(inputs, ids.size(0), config_.geometry(), c);
    PEFT_CHECK(!inputs.prompt_embeds.defined() || !inputs.position_ids.defined(), c,
               "position_ids cannot be combined with prompt_embeds (the virtual tokens take the first positions)");
    hidden = embeddings->forward(ids, inputs.token_type_ids, inputs.position_ids, inputs.prompt_embeds, lengths.prefix);
  }
  at::Tensor additive;
  if (inputs.attention_mask.defined()) {
    PEFT_CHECK(given || inputs.attention_mask.sizes() == ids.sizes(), c,
               "attention_mask has shape {}, expected {} like input_ids", c10::str(inputs.attention_mask.sizes()),
               c10::str(ids.sizes()));
    additive = nn::additive_padding_mask(extend_mask(inputs.attention_mask, lengths.prefix + lengths.virtual_tokens),
                                         hidden.scalar_type());
  }
  ModelOutput out;
  if (inputs.output_hidden_states) out.hidden_states.push_back(hidden);
  const int64_t L = static_cast<int64_t>(encoder->layer->size());
  const bool ckpt = nn::checkpointing_applies(checkpoint_blocks, is_training());
  const auto params = ckpt ? nn::tensors_requiring_grad(parameters()) : std::vector<at::Tensor>{};
  for (int64_t i = 0; i < L; ++i) {
    auto layer = encoder->layer->ptr<BertLayerImpl>(i);
    const auto& prefix = layer_prefix(inputs, i);
    const at::Tensor x = tap_stream(inputs, i, hidden);
    hidden = ckpt ? nn::checkpointed([layer, additive](const std::vector<at::Tensor>& in) {
                      return layer->forward(in[0], additive, {in[1], in[2]});
                    }, {x, prefix.key, prefix.value}, params)
                  : layer->forward(x, additive, prefix);
    if (inputs.output_hidden_states) out.hidden_states.push_back(hidden);
  }
  out.last_hidden_state = tap_final(inputs, tap_stream(inputs, L, hidden));
  if (pooler) out.pooler_output = pooler->forward(out.last_hidden_state);
  return out;
}

// ---- task models -------------------------------------------------------------

ModelGeometry BertFamilyModel::geometry() const { return config_.geometry(); }

nlohmann::json BertFamilyModel::config_json() const {
  auto j = config_.to_json();
  j["architectures"] = nlohmann::json::array({architecture()});
  return j;
}

bool BertFamilyModel::ignorable_checkpoint_key(const std::string& key) const {
  // Non-persistent buffers older checkpoints carry.
  return core::ends_with(key, "embeddings.position_ids") || core::ends_with(key, "embeddings.token_type_ids");
}

void BertFamilyModel::init_weights() { init_standard(*this, config_.initializer_range); }

BertForFeatureExtraction::BertForFeatureExtraction(const BertConfig& config) : BertFamilyModel(config) {
  config_.validate();
  backbone_ = BertModel(config_, /*add_pooling_layer=*/true);
  // HF's bare model has no prefix: its children sit at the top level.
  register_module("embeddings", backbone_->embeddings);
  register_module("encoder", backbone_->encoder);
  register_module("pooler", backbone_->pooler);
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

ModelOutput BertForFeatureExtraction::forward(const ModelInputs& inputs) {
  PEFT_CHECK(!inputs.labels.defined(), config_.model_type(),
             "labels given to {}, which has no head; load a task model (e.g. sequence_classification)",
             architecture());
  return backbone_->forward(inputs);
}

RobertaClassificationHeadImpl::RobertaClassificationHeadImpl(int64_t hidden, int64_t num_labels, double dropout)
    : dropout_(dropout) {
  dense = register_module("dense", nn::AdaptableLinear(nn::AdaptableLinearOptions(hidden, hidden)));
  out_proj = register_module("out_proj", nn::AdaptableLinear(nn::AdaptableLinearOptions(hidden, num_labels)));
}

at::Tensor RobertaClassificationHeadImpl::forward(const at::Tensor& hidden) {
  at::Tensor x = torch::dropout(hidden.select(1, 0), dropout_, is_training());
  x = torch::dropout(torch::tanh(dense->forward(x)), dropout_, is_training());
  return out_proj->forward(x);
}

BertForSequenceClassification::BertForSequenceClassification(const BertConfig& config) : BertFamilyModel(config) {
  config_.validate();
  // RoBERTa's classification model has no pooler (HF: add_pooling_layer=False).
  backbone = register_module(config_.model_type(), BertModel(config_, /*add_pooling_layer=*/!config_.roberta));
  const double p = config_.head.classifier_dropout.value_or(config_.hidden_dropout_prob);
  if (config_.roberta)
    roberta_classifier =
        register_module("classifier", RobertaClassificationHead(config_.hidden_size, config_.head.num_labels, p));
  else
    classifier = register_module("classifier",
                                 nn::AdaptableLinear(nn::AdaptableLinearOptions(config_.hidden_size, config_.head.num_labels)));
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

ModelOutput BertForSequenceClassification::forward(const ModelInputs& inputs) {
  ModelOutput out = backbone->forward(inputs);
  if (config_.roberta) {
    out.logits = roberta_classifier->forward(out.last_hidden_state);
  } else {
    const double p = config_.head.classifier_dropout.value_or(config_.hidden_dropout_prob);
    out.logits = classifier->forward(torch::dropout(out.pooler_output, p, is_training()));
  }
  if (inputs.labels.defined()) out.loss = classification_loss(out.logits, inputs.labels, config_.head, inputs.per_example_loss);
  return out;
}

}  // namespace peft::models
