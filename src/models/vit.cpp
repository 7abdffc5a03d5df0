#include "peft/models/vit.h"

#include <torch/torch.h>

#include "encoder_fields.h"
#include "init_weights.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/nn/per_sample.h"
#include "prompt_inputs.h"

namespace peft::models {
namespace F = torch::nn::functional;
namespace {
constexpr const char* kC = "vit";

nn::LayerNorm layer_norm(int64_t dim, double eps) {
  return nn::LayerNorm(dim, eps);
}
}  // namespace

// ---- config ------------------------------------------------------------------

void ViTConfig::validate() const {
  PEFT_CHECK(hidden_size > 0 && num_hidden_layers > 0 && num_attention_heads > 0 && intermediate_size > 0 &&
                 image_size > 0 && patch_size > 0 && num_channels > 0,
             kC,
             "config.json: hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, image_size, "
             "patch_size and num_channels must be positive");
  PEFT_CHECK(hidden_size % num_attention_heads == 0, kC,
             "config.json: hidden_size ({}) must be divisible by num_attention_heads ({})", hidden_size,
             num_attention_heads);
  PEFT_CHECK(image_size % patch_size == 0, kC, "config.json: image_size ({}) must be a multiple of patch_size ({})",
             image_size, patch_size);
  for (double p : {hidden_dropout_prob, attention_probs_dropout_prob})
    PEFT_CHECK(p >= 0.0 && p < 1.0, kC, "config.json: dropout probabilities must be in [0, 1), found {}", p);
  nn::activation(hidden_act);
}

ViTConfig ViTConfig::from_json(const nlohmann::json& j) {
  ViTConfig cfg;
  const std::string w = "config.json";
  using core::get_or;
  read_encoder_fields(j, cfg, kC);
  cfg.image_size = get_or<int64_t>(j, "image_size", cfg.image_size, kC, w);
  cfg.patch_size = get_or<int64_t>(j, "patch_size", cfg.patch_size, kC, w);
  cfg.num_channels = get_or<int64_t>(j, "num_channels", cfg.num_channels, kC, w);
  cfg.qkv_bias = get_or<bool>(j, "qkv_bias", cfg.qkv_bias, kC, w);
  cfg.head = HeadConfig::from_json(j, kC);
  cfg.original = j;
  cfg.validate();
  return cfg;
}

nlohmann::json ViTConfig::to_json() const {
  nlohmann::json j = original.is_object() ? original : nlohmann::json::object();
  j["model_type"] = "vit";
  write_encoder_fields(j, *this);
  j["image_size"] = image_size;
  j["patch_size"] = patch_size;
  j["num_channels"] = num_channels;
  j["qkv_bias"] = qkv_bias;
  head.to_json(j);
  return j;
}

// ---- modules -----------------------------------------------------------------

ViTPatchEmbeddingsImpl::ViTPatchEmbeddingsImpl(const ViTConfig& config) : config_(config) {
  projection = register_module(
      "projection", nn::RoutedConv2d(torch::nn::Conv2dOptions(config.num_channels, config.hidden_size, config.patch_size)
                                          .stride(config.patch_size)));
}

at::Tensor ViTPatchEmbeddingsImpl::forward(const at::Tensor& pixel_values) {
  PEFT_CHECK(pixel_values.defined() && pixel_values.dim() == 4, kC,
             "pixel_values must be a [batch, channels, height, width] tensor, found {}",
             pixel_values.defined() ? c10::str(pixel_values.sizes()) : "none");
  PEFT_CHECK(pixel_values.size(1) == config_.num_channels && pixel_values.size(2) == config_.image_size &&
                 pixel_values.size(3) == config_.image_size,
             kC, "pixel_values have shape {}, expected [batch, {}, {}, {}] (num_channels, image_size)",
             c10::str(pixel_values.sizes()), config_.num_channels, config_.image_size, config_.image_size);
  PEFT_CHECK(pixel_values.is_floating_point(), kC, "pixel_values must be floating point, found {}",
             c10::toString(pixel_values.scalar_type()));
  at::Tensor x = pixel_values.to(projection->weight.scalar_type());
  at::Tensor patches = projection->forward(x).flatten(2).transpose(1, 2);
  // The bias adds to every patch: recorded on [batch, patches, hidden] for per-sample gradients (BitFit).
  if (nn::per_sample_recording()) nn::record_per_sample(nn::PerSampleRule::kBias, patches, {}, projection->bias);
  return patches;
}

ViTEmbeddingsImpl::ViTEmbeddingsImpl(const ViTConfig& config) : dropout_(config.hidden_dropout_prob) {
  cls_token = register_parameter("cls_token", torch::zeros({1, 1, config.hidden_size}));
  // Registered before patch_embeddings, as HF does, so parameter order follows the reference.
  patch_embeddings = register_module("patch_embeddings", ViTPatchEmbeddings(config));
  position_embeddings =
      register_parameter("position_embeddings", torch::zeros({1, config.num_patches() + 1, config.hidden_size}));
}

at::Tensor ViTEmbeddingsImpl::forward(const at::Tensor& pixel_values, const at::Tensor& prompt_embeds) {
  at::Tensor patches = patch_embeddings->forward(pixel_values);
  at::Tensor cls = cls_token.expand({patches.size(0), -1, -1});
  at::Tensor emb = torch::cat({cls, patches}, 1) + position_embeddings;
  if (prompt_embeds.defined())
    emb = torch::cat({emb.narrow(1, 0, 1), prompt_embeds.to(emb.scalar_type()), emb.narrow(1, 1, emb.size(1) - 1)}, 1);
  return torch::dropout(emb, dropout_, is_training());
}

ViTDenseImpl::ViTDenseImpl(int64_t in, int64_t out, double p) : dropout_(p) {
  dense = register_module("dense", nn::AdaptableLinear(nn::AdaptableLinearOptions(in, out)));
}

at::Tensor ViTDenseImpl::forward(const at::Tensor& x) { return torch::dropout(dense->forward(x), dropout_, is_training()); }

ViTAttentionImpl::ViTAttentionImpl(const ViTConfig& config) {
  attention = register_module("attention", nn::SelfAttention(config.hidden_size, config.num_attention_heads,
                                                              config.qkv_bias, config.attention_probs_dropout_prob));
  output = register_module("output", ViTDense(config.hidden_size, config.hidden_size, config.hidden_dropout_prob));
}

ViTIntermediateImpl::ViTIntermediateImpl(const ViTConfig& config) : act_(nn::activation(config.hidden_act)) {
  dense = register_module("dense", nn::AdaptableLinear(nn::AdaptableLinearOptions(config.hidden_size, config.intermediate_size)));
}

ViTLayerImpl::ViTLayerImpl(const ViTConfig& config) {
  attention = register_module("attention", ViTAttention(config));
  intermediate = register_module("intermediate", ViTIntermediate(config));
  output = register_module("output", ViTDense(config.intermediate_size, config.hidden_size, config.hidden_dropout_prob));
  layernorm_before = register_module("layernorm_before", layer_norm(config.hidden_size, config.layer_norm_eps));
  layernorm_after = register_module("layernorm_after", layer_norm(config.hidden_size, config.layer_norm_eps));
  adapters = register_module("adapters", nn::BlockAdapters());
}

at::Tensor ViTLayerImpl::forward(const at::Tensor& hidden, const nn::AttentionPrefix& prefix) {
  at::Tensor a = layernorm_before->forward(hidden);
  at::Tensor h = adapters->apply("attention", a, attention->forward(a, prefix)) + hidden;
  at::Tensor f = layernorm_after->forward(h);
  return adapters->apply("ffn", f, output->forward(intermediate->forward(f))) + h;
}

ViTEncoderImpl::ViTEncoderImpl(const ViTConfig& config) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layer->push_back(ViTLayer(config));
}

ViTPoolerImpl::ViTPoolerImpl(int64_t hidden) {
  dense = register_module("dense", nn::AdaptableLinear(nn::AdaptableLinearOptions(hidden, hidden)));
}

at::Tensor ViTPoolerImpl::forward(const at::Tensor& hidden) { return torch::tanh(dense->forward(hidden.select(1, 0))); }

ViTModelImpl::ViTModelImpl(const ViTConfig& config, bool add_pooling_layer) : config_(config) {
  embeddings = register_module("embeddings", ViTEmbeddings(config));
  encoder = register_module("encoder", ViTEncoder(config));
  layernorm = register_module("layernorm", layer_norm(config.hidden_size, config.layer_norm_eps));
  if (add_pooling_layer) pooler = register_module("pooler", ViTPooler(config.hidden_size));
}

ModelOutput ViTModelImpl::forward(const ModelInputs& inputs) {
  PEFT_CHECK(!inputs.input_ids.defined() && !inputs.attention_mask.defined(), kC,
             "input_ids / attention_mask given to a vision model (it takes pixel_values)");
  check_cache_use(inputs, /*decoder=*/false, false, kC);
  const bool given = given_embedding_output(inputs, config_.geometry(), kC);
  const int64_t batch = inputs.pixel_values.defined() ? inputs.pixel_values.size(0) : 0;
  if (!given) check_prompt_inputs(inputs, batch, config_.geometry(), kC);
  ModelOutput out;
  at::Tensor hidden = given ? inputs.embedding_output : embeddings->forward(inputs.pixel_values, inputs.prompt_embeds);
  if (inputs.output_hidden_states) out.hidden_states.push_back(hidden);
  const int64_t L = static_cast<int64_t>(encoder->layer->size());
  const bool ckpt = nn::checkpointing_applies(checkpoint_blocks, is_training());
  const auto params = ckpt ? nn::tensors_requiring_grad(parameters()) : std::vector<at::Tensor>{};
  for (int64_t i = 0; i < L; ++i) {
    auto layer = encoder->layer->ptr<ViTLayerImpl>(i);
    const auto& prefix = layer_prefix(inputs, i);
    const at::Tensor x = tap_stream(inputs, i, hidden);
    hidden = ckpt ? nn::checkpointed([layer](const std::vector<at::Tensor>& in) {
                      return layer->forward(in[0], {in[1], in[2]});
                    }, {x, prefix.key, prefix.value}, params)
                  : layer->forward(x, prefix);
    if (inputs.output_hidden_states) out.hidden_states.push_back(hidden);
  }
  out.last_hidden_state = tap_final(inputs, layernorm->forward(tap_stream(inputs, L, hidden)));
  if (pooler) out.pooler_output = pooler->forward(out.last_hidden_state);
  return out;
}

// ---- task models -------------------------------------------------------------

ModelGeometry ViTFamilyModel::geometry() const { return config_.geometry(); }

nlohmann::json ViTFamilyModel::config_json() const {
  auto j = config_.to_json();
  j["architectures"] = nlohmann::json::array({architecture()});
  return j;
}

void ViTFamilyModel::init_weights() {
  init_standard(*this, config_.initializer_range);
  torch::NoGradGuard no_grad;
  // HF draws these from a truncated normal at ±2 (absolute), which at std 0.02 is a plain normal.
  for (auto& item : named_parameters())
    if (item.key().find("cls_token") != std::string::npos || item.key().find("position_embeddings") != std::string::npos)
      item.value().normal_(0.0, config_.initializer_range);
}

ViTForFeatureExtraction::ViTForFeatureExtraction(const ViTConfig& config) : ViTFamilyModel(config) {
  config_.validate();
  backbone_ = ViTModel(config_, /*add_pooling_layer=*/true);
  register_module("embeddings", backbone_->embeddings);
  register_module("encoder", backbone_->encoder);
  register_module("layernorm", backbone_->layernorm);
  register_module("pooler", backbone_->pooler);
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

ModelOutput ViTForFeatureExtraction::forward(const ModelInputs& inputs) {
  PEFT_CHECK(!inputs.labels.defined(), kC, "labels given to ViTModel, which has no head; load image_classification");
  return backbone_->forward(inputs);
}

ViTForImageClassification::ViTForImageClassification(const ViTConfig& config) : ViTFamilyModel(config) {
  config_.validate();
  vit = register_module("vit", ViTModel(config_, /*add_pooling_layer=*/false));
  classifier = register_module("classifier",
                               nn::AdaptableLinear(nn::AdaptableLinearOptions(config_.hidden_size, config_.head.num_labels)));
  if (!weights_will_be_loaded()) init_weights();
  freeze_all(*this);
}

ModelOutput ViTForImageClassification::forward(const ModelInputs& inputs) {
  ModelOutput out = vit->forward(inputs);
  out.logits = classifier->forward(out.last_hidden_state.select(1, 0));
  if (inputs.labels.defined()) out.loss = classification_loss(out.logits, inputs.labels, config_.head, inputs.per_example_loss);
  return out;
}

}  // namespace peft::models
