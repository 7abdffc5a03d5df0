#include "peft/methods/lst/lst.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "lst_prune_init.h"
#include "methods/config_fields.h"
#include "methods/method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/strings.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"
#include "peft/data/batch_source.h"
#include "peft/methods/prompt/prompt_learning.h"
#include "peft/models/load.h"
#include "peft/nn/module_dtype.h"
#include "peft/peft_model.h"
#include "peft/nn/side_network.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "lst";

/// config.json keys of the sizes a side network divides, per family.
struct SizeKeys {
  const char* hidden;
  const char* inner;
  const char* layers;
  bool has_vocab;
};

SizeKeys size_keys(const std::string& model_type) {
  if (model_type == "gpt2") return {"n_embd", "n_inner", "n_layer", true};
  if (model_type == "bert" || model_type == "roberta" || model_type == "llama")
    return {"hidden_size", "intermediate_size", "num_hidden_layers", true};
  if (model_type == "vit") return {"hidden_size", "intermediate_size", "num_hidden_layers", false};
  if (model_type == "t5") return {"d_model", "d_ff", "num_layers", true};
  fail(kC, fmt::format("no side network for model_type '{}' (supported: gpt2, bert, roberta, llama, vit, t5)", model_type));
}

/// The chosen layers (`option`: the config key), every layer when none is chosen.
std::vector<int64_t> chosen_layers(const std::vector<int64_t>& chosen, int64_t num_layers, const char* option) {
  std::vector<int64_t> out = chosen;
  if (out.empty())
    for (int64_t i = 0; i < num_layers; ++i) out.push_back(i);
  for (int64_t l : out)
    PEFT_CHECK(l < num_layers, kC, "{}: layer {} does not exist (the model has {})", option, l, num_layers);
  return out;
}

/// The backbone's layer counts and the side blocks' backbone layers, per stack.
struct SideLayout {
  int64_t encoder_layers = 0;          ///< the backbone's (an encoder-decoder's encoder)
  int64_t decoder_layers = 0;          ///< the backbone decoder's; 0 without one
  std::vector<int64_t> encoder, decoder;
  int64_t taps() const { return encoder_layers + 1 + (decoder_layers > 0 ? decoder_layers + 1 : 0); }
  int64_t gates() const { return static_cast<int64_t>(encoder.size() + decoder.size()); }
};

class LstSideNetworkImpl : public nn::SideNetwork {
 public:
  LstSideNetworkImpl(std::shared_ptr<models::PretrainedModel> side_model, const LstConfig& cfg, int64_t hidden,
                     SideLayout layout)
      : nn::SideNetwork("LstSideNetwork"),
        side_model_(std::move(side_model)),
        layout_(std::move(layout)),
        temperature_(cfg.gate_temperature),
        gated_(cfg.output == "gated") {
    const int64_t ds = side_model_->hidden_size(), n = layout_.gates();
    side = register_module("side", std::make_shared<torch::nn::Module>("SideStack"));
    for (const auto& name : side_model_->block_stack_modules())
      for (const auto& child : side_model_->named_children())
        if (child.key() == name) side->register_module(name, child.value());
    first_downsample = register_module("first_downsample", torch::nn::Linear(hidden, ds));
    if (layout_.decoder_layers > 0)
      decoder_first_downsample = register_module("decoder_first_downsample", torch::nn::Linear(hidden, ds));
    downsamples = register_module("downsamples", torch::nn::ModuleList());
    for (int64_t i = 0; i < n; ++i) downsamples->push_back(torch::nn::Linear(hidden, ds));
    upsample = register_module("upsample", torch::nn::Linear(ds, hidden));
    gate_alphas = register_parameter("gate_alphas", torch::full({n}, cfg.gate_alpha));
    if (gated_) output_gate_alpha = register_parameter("output_gate_alpha", torch::full({1}, cfg.gate_alpha));
  }

  models::ModelInputs prepare(const models::ModelInputs& inputs) override {
    // The side network reads the backbone's stream at every position of every block: decoding one
    // token at a time would need a cache of its own for each side block.
    PEFT_CHECK(!inputs.kv_cache, "lst",
               "LST's side network has no key/value cache: generate without one (use_cache = false)");
    PEFT_CHECK(!inputs.encoder_outputs.defined(), kC,
               "LST's side encoder reads the backbone encoder's blocks: give input_ids, not encoder_outputs");
    // One forward's state: the backbone's stream at every block boundary, and the no-grad scope
    // the backbone runs in (closed when its final hidden state reaches the side network).
    struct Run {
      std::vector<at::Tensor> taps;
      std::unique_ptr<torch::NoGradGuard> no_grad;
    };
    auto run = std::make_shared<Run>();
    run->taps.resize(static_cast<size_t>(layout_.taps()));
    models::ModelInputs out = inputs;
    auto previous = inputs.stream_hook;
    out.stream_hook = [run, previous](int64_t block, const at::Tensor& stream) {
      at::Tensor s = previous ? previous(block, stream) : stream;
      if (block == 0) run->no_grad = std::make_unique<torch::NoGradGuard>();
      run->taps.at(static_cast<size_t>(block)) = s.detach();
      return s;
    };
    out.final_hidden_hook = [this, run, inputs](const at::Tensor& backbone_final) {
      run->no_grad.reset();
      return side_forward(inputs, run->taps, backbone_final);
    };
    return out;
  }

  bool decodes_with_kv_cache() const override { return false; }

  // The side model's unused parts (embeddings, pooler) are not registered, yet its forward
  // passes through some of them: they follow every move of the network.
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override {
    side_model_->to(device, dtype, non_blocking);
    nn::SideNetwork::to(device, dtype, non_blocking);
  }
  void to(torch::Dtype dtype, bool non_blocking = false) override {
    side_model_->to(dtype, non_blocking);
    nn::SideNetwork::to(dtype, non_blocking);
  }
  void to(torch::Device device, bool non_blocking = false) override {
    side_model_->to(device, non_blocking);
    nn::SideNetwork::to(device, non_blocking);
  }

  torch::nn::Linear first_downsample{nullptr}, decoder_first_downsample{nullptr}, upsample{nullptr};
  torch::nn::ModuleList downsamples{nullptr};  ///< the encoder's (or only) stack's ladders, then the decoder's
  std::shared_ptr<torch::nn::Module> side;
  at::Tensor gate_alphas, output_gate_alpha;
  const models::PretrainedModel& side_model() const { return *side_model_; }
  const SideLayout& layout() const { return layout_; }

 private:
  at::Tensor side_forward(const models::ModelInputs& inputs, const std::vector<at::Tensor>& taps,
                          const at::Tensor& backbone_final) {
    PEFT_CHECK(taps.front().defined() && taps.back().defined(), kC,
               "the backbone did not report its hidden states (its family lacks hidden-state taps)");
    // The side network computes in its own dtype (float32 beside a half-precision backbone).
    const auto dtype = first_downsample->weight.scalar_type();
    for (const auto& p : side_model_->parameters())  // its unregistered parts too (see to() below)
      if (p.is_floating_point() && p.scalar_type() != dtype) {
        nn::to_floating_dtype(*side_model_, dtype);
        break;
      }
    models::ModelInputs s;
    s.attention_mask = inputs.attention_mask;
    s.position_ids = inputs.position_ids;
    s.embedding_output = first_downsample->forward(taps.front().to(dtype));
    const int64_t n_enc = static_cast<int64_t>(layout_.encoder.size());
    const int64_t n_dec = static_cast<int64_t>(layout_.decoder.size());
    const int64_t backbone_decoder_first = layout_.encoder_layers + 1;  // the decoder's first tap
    if (layout_.decoder_layers > 0) {
      s.decoder_embedding_output = decoder_first_downsample->forward(taps.at(backbone_decoder_first).to(dtype));
      s.decoder_attention_mask = inputs.decoder_attention_mask;
    }
    auto ladder = [&](int64_t gate, int64_t tap, const at::Tensor& h) {
      at::Tensor mu = torch::sigmoid(gate_alphas[gate] / temperature_);
      return mu * h + (1 - mu) * downsamples->ptr<torch::nn::LinearImpl>(gate)->forward(taps.at(tap).to(dtype));
    };
    // The side numbers its own taps the same way: its encoder's 0..n_enc, then its decoder's.
    s.stream_hook = [&](int64_t j, const at::Tensor& h) {
      if (j < n_enc) return ladder(j, layout_.encoder[j] + 1, h);
      const int64_t k = j - (n_enc + 1);
      if (k >= 0 && k < n_dec) return ladder(n_enc + k, backbone_decoder_first + layout_.decoder[k] + 1, h);
      return h;
    };
    at::Tensor up = upsample->forward(side_model_->forward(s).last_hidden_state);
    if (!gated_) return up.to(backbone_final.scalar_type());
    at::Tensor mu = torch::sigmoid(output_gate_alpha / temperature_);
    return (mu * backbone_final.to(dtype) + (1 - mu) * up).to(backbone_final.scalar_type());
  }

  std::shared_ptr<models::PretrainedModel> side_model_;  // its embeddings stay unregistered: never used
  SideLayout layout_;
  double temperature_;
  bool gated_;
};

/// The side's parameters named as in the bare side model ("h.0.ln_1.weight").
std::vector<std::pair<std::string, at::Tensor>> side_stack_params(LstSideNetworkImpl& net) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& p : net.side->named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

SidePruning pruning_spec(PeftModel& model, const LstSideNetworkImpl& net) {
  auto& base = model.base_model();
  SidePruning spec;
  spec.model_type = base.model_type();
  spec.backbone = base.geometry();
  spec.side = net.side_model().geometry();
  spec.layers = net.layout().encoder;
  spec.decoder_layers = net.layout().decoder;
  spec.layers_pattern = base.layers_pattern();
  const std::string prefix = base.base_model_prefix();
  const auto& names = model.base_parameter_names();
  const bool prefixed = !prefix.empty() && std::any_of(names.begin(), names.end(), [&](const std::string& n) {
    return n.rfind(prefix + ".", 0) == 0;
  });
  spec.backbone_prefix = prefixed ? prefix + "." : "";
  return spec;
}

/// The backbone's own parameters (what the PeftModel froze), by name.
std::map<std::string, at::Tensor> base_parameters(PeftModel& model) {
  std::map<std::string, at::Tensor> out;
  auto all = model.base_model().named_parameters();
  for (const auto& name : model.base_parameter_names()) out[name] = all[name];
  for (const auto& [path, lin] : model.linears())  // a quantized weight's values
    if (lin->quantized()) out[path + ".weight"] = lin->weight_values();
  return out;
}

LstSideNetworkImpl& lst_network(PeftModel& model, const std::string& adapter) {
  auto net = std::dynamic_pointer_cast<LstSideNetworkImpl>(model.side_network(adapter));
  PEFT_CHECK(net != nullptr, kC, "adapter '{}' is not an LST adapter", adapter);
  return *net;
}

void attach_lst(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<LstConfig&>(base_cfg);
  auto& base = model.base_model();
  PEFT_CHECK(!base.block_stack_modules().empty(), kC, "model_type '{}' names no block stack for a side network",
             base.model_type());
  const auto g = base.geometry();
  SideLayout layout;
  layout.encoder_layers = g.num_layers;
  layout.encoder = chosen_layers(cfg.side_layers, g.num_layers, "side_layers");
  const bool with_decoder = base.decoder_start_token().has_value();  // an encoder-decoder's decoder
  if (with_decoder) {
    layout.decoder_layers = g.num_decoder_layers;
    layout.decoder = chosen_layers(cfg.side_decoder_layers, g.num_decoder_layers, "side_decoder_layers");
  } else {
    PEFT_CHECK(cfg.side_decoder_layers.empty(), kC, "side_decoder_layers given for {} model without a decoder",
               base.model_type());
  }
  auto side_cfg = lst_side_config(base.config_json(), g, cfg.reduction_factor, static_cast<int64_t>(layout.encoder.size()),
                                  static_cast<int64_t>(layout.decoder.size()));
  // An encoder-decoder's side names its own architecture (T5Model or T5EncoderModel).
  auto side_model = models::create_model(side_cfg, side_cfg.contains("architectures") ? "" : "feature_extraction");
  const auto opts = base_tensor_options(model);
  auto net = std::make_shared<LstSideNetworkImpl>(side_model, cfg, g.hidden_size, std::move(layout));
  net->to(opts.device(), opts.dtype().toScalarType());
  if (cfg.side_init != "random") {
    // Magnitude importance; with side_init "fisher" the prepare hook re-prunes from batches.
    auto params = base_parameters(model);
    init_side_from_backbone(side_stack_params(*net), params, params, pruning_spec(model, *net));
  }
  model.attach_side_network(adapter, net);
}

}  // namespace

nlohmann::json lst_side_config(const nlohmann::json& backbone, const models::ModelGeometry& g, int64_t r,
                               int64_t side_layers, int64_t side_decoder_layers) {
  const std::string type = backbone.value("model_type", "");
  const SizeKeys keys = size_keys(type);
  const bool t5 = type == "t5";
  PEFT_CHECK(r >= 1, kC, "reduction_factor must be >= 1, found {}", r);
  PEFT_CHECK(g.hidden_size % r == 0 && g.intermediate_size % r == 0, kC,
             "reduction_factor {} must divide the hidden size {} and the feed-forward size {}", r, g.hidden_size,
             g.intermediate_size);
  const int64_t ds = g.hidden_size / r;
  if (t5) {  // T5's heads have their own width (d_kv), not d_model / heads
    PEFT_CHECK(g.head_dim % r == 0, kC, "reduction_factor {} must divide d_kv {} (the side keeps the {} heads)", r,
               g.head_dim, g.num_heads);
  } else {
    PEFT_CHECK(ds % g.num_heads == 0, kC,
               "reduction_factor {}: the side width {} must be a multiple of the {} attention heads (head_dim {} / r)",
               r, ds, g.num_heads, g.head_dim);
  }
  PEFT_CHECK(type != "llama" || (ds / g.num_heads) % 2 == 0, kC,
             "reduction_factor {}: the side head_dim {} must be even for rotary embeddings", r, ds / g.num_heads);
  PEFT_CHECK(side_decoder_layers == 0 || t5, kC, "side decoder layers given for model_type '{}', which has no decoder",
             type);
  nlohmann::json j = backbone;
  j[keys.hidden] = ds;
  j[keys.inner] = g.intermediate_size / r;
  j[keys.layers] = side_layers;
  if (t5) {
    j["d_kv"] = g.head_dim / r;
    if (side_decoder_layers > 0) j["num_decoder_layers"] = side_decoder_layers;
  }
  // The side reads the backbone's embeddings through a ladder: its own vocabulary is never used
  // (only as large as the special token ids the config names).
  if (keys.has_vocab) {
    int64_t vocab = 1;
    for (const char* k : {"pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"})
      if (j.contains(k) && j[k].is_number_integer()) vocab = std::max(vocab, j[k].get<int64_t>() + 1);
    j["vocab_size"] = vocab;
  }
  for (const char* k : {"architectures", "head_dim", "num_labels", "id2label", "label2id"}) j.erase(k);
  if (t5) j["architectures"] = {side_decoder_layers > 0 ? "T5Model" : "T5EncoderModel"};
  return j;
}

void lst_fisher_init(PeftModel& model, const std::string& adapter, const std::vector<models::ModelInputs>& batches) {
  auto& net = lst_network(model, adapter);
  PEFT_CHECK(!batches.empty(), kC, "Fisher importance needs at least one batch");
  auto params = base_parameters(model);
  std::map<std::string, at::Tensor> fisher;
  for (auto& [name, p] : params) fisher[name] = torch::zeros_like(p, torch::kDouble);
  const bool was_training = model.base_model().is_training();
  const std::string active = model.active_adapter();
  model.disable_adapters();  // the bare backbone's loss
  model.eval();
  try {
    for (auto& [name, p] : params) p.set_requires_grad(true);
    for (const auto& batch : batches) {
      PEFT_CHECK(batch.labels.defined(), kC, "Fisher importance needs labelled batches");
      for (auto& [name, p] : params) p.mutable_grad() = at::Tensor();
      model.forward(batch).loss.backward();
      torch::NoGradGuard no_grad;
      for (auto& [name, p] : params)
        if (p.grad().defined()) fisher[name] += p.grad().to(torch::kDouble).square();
    }
  } catch (...) {
    for (auto& [name, p] : params) p.mutable_grad() = at::Tensor();
    model.enable_adapters();
    model.train(was_training);
    throw;
  }
  for (auto& [name, p] : params) p.mutable_grad() = at::Tensor();
  model.enable_adapters();  // restores every base parameter's requires_grad = false
  model.train(was_training);
  init_side_from_backbone(side_stack_params(net), params, fisher, pruning_spec(model, net));
  log::info("lst: side network of '{}' pruned by Fisher importance over {} batches", adapter, batches.size());
}

namespace {
const std::vector<ConfigField<LstConfig>>& lst_fields() {
  using C = LstConfig;
  static const std::vector<ConfigField<C>> f = {
      field("reduction_factor", &C::reduction_factor),
      field("gate_alpha", &C::gate_alpha),
      field("gate_temperature", &C::gate_temperature),
      field("side_layers", &C::side_layers),
      field("side_decoder_layers", &C::side_decoder_layers),
      field("side_init", &C::side_init),
      field("fisher_batches", &C::fisher_batches),
      field("output", &C::output)};
  return f;
}
}  // namespace

std::shared_ptr<LstConfig> LstConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, lst_fields(), kC, "lst config");
  return c;
}

nlohmann::json LstConfig::to_json() const { return write_config(*this, lst_fields()); }

void LstConfig::validate() const {
  PEFT_CHECK(reduction_factor >= 1, kC, "reduction_factor must be >= 1, found {}", reduction_factor);
  PEFT_CHECK(gate_temperature > 0 && std::isfinite(gate_temperature), kC, "gate_temperature must be > 0, found {}",
             gate_temperature);
  PEFT_CHECK(std::isfinite(gate_alpha), kC, "gate_alpha must be finite, found {}", gate_alpha);
  PEFT_CHECK(side_init == "magnitude" || side_init == "fisher" || side_init == "random", kC,
             "side_init must be \"magnitude\", \"fisher\" or \"random\", found '{}'", side_init);
  PEFT_CHECK(fisher_batches >= 1, kC, "fisher_batches must be >= 1, found {}", fisher_batches);
  PEFT_CHECK(output == "side" || output == "gated", kC, "output must be \"side\" or \"gated\", found '{}'", output);
  for (const auto* list : {&side_layers, &side_decoder_layers}) {
    const char* option = list == &side_layers ? "side_layers" : "side_decoder_layers";
    std::vector<int64_t> seen;
    for (int64_t l : *list) {
      PEFT_CHECK(l >= 0, kC, "{} entries must be >= 0, found {}", option, l);
      PEFT_CHECK(std::find(seen.begin(), seen.end(), l) == seen.end(), kC, "{} lists layer {} twice", option, l);
      PEFT_CHECK(seen.empty() || l > seen.back(), kC, "{} must be increasing, found {} after {}", option, l, seen.back());
      seen.push_back(l);
    }
  }
}

Method lst_method() {
  Method m;
  m.name = "lst";
  m.peft_type = "LST";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return LstConfig::from_json(j); };
  m.attach = attach_lst;
  m.parameter_role = [](const std::string& p) {
    return core::ends_with(p, ".gate_alphas") || core::ends_with(p, ".output_gate_alpha") ? std::string("gate") : std::string();
  };
  m.data_needs = [](const MethodConfig& c) {
    DataNeeds needs;
    needs.init = dynamic_cast<const LstConfig&>(c).side_init == "fisher";
    needs.reason = "side_init 'fisher' (Fisher importance from the loss gradients of training batches)";
    return needs;
  };
  m.prepare = [](PeftModel& model, const std::string& adapter, const data::BatchSource& batches) {
    const auto& cfg = dynamic_cast<const LstConfig&>(model.adapter_config(adapter));
    lst_fisher_init(model, adapter, batches.first(cfg.fisher_batches));
  };
  return m;
}

}  // namespace peft::methods
