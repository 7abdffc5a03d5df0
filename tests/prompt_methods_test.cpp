// The prompt family beyond the conformance suite: a prefix is exactly a cache of earlier tokens
// (positions, masks, RoPE, grouped-query heads), a prompt is exactly earlier input embeddings,
// reparameterization encoders are dropped at save, LLaMA-Adapter's gates and autograd reach,
// and parameter counts from geometry alone (LLaMA-7B) equal the paper's.
#include <filesystem>

#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/safetensors.h"
#include "peft/methods/llama_adapter.h"
#include "peft/methods/method.h"
#include "peft/methods/prompt/prompt_learning.h"
#include "peft/methods/prompt/prompt_tuning.h"
#include "peft/models/gpt2.h"
#include "peft/models/llama.h"
#include "peft/models/load.h"
#include "peft/nn/attention.h"
#include "peft/nn/rotary.h"
#include "peft/peft_model.h"
#include "peft/tokenizers/tokenizer.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

using torch::indexing::Slice;

std::shared_ptr<methods::MethodConfig> config(nlohmann::json j) { return methods::parse_config(j); }

/// Keys and values of the first `n` tokens in every layer, as the layer caches them (rotated for LLaMA).
std::vector<nn::AttentionPrefix> cached_prefix(models::PretrainedModel& model, const models::ModelOutput& full,
                                               int64_t n) {
  std::vector<nn::AttentionPrefix> out;
  torch::NoGradGuard g;
  if (auto* gpt2 = dynamic_cast<models::GPT2LMHeadModel*>(&model)) {
    const auto& c = gpt2->config();
    for (int64_t l = 0; l < c.n_layer; ++l) {
      auto block = gpt2->transformer->h->ptr<models::GPT2BlockImpl>(l);
      auto kv = block->attn->c_attn->forward(block->ln_1->forward(full.hidden_states[l].narrow(1, 0, n))).split(c.n_embd, 2);
      auto heads = [&](const at::Tensor& t) { return nn::split_heads(t, c.n_head, c.n_embd / c.n_head); };
      out.push_back({heads(kv[1]), heads(kv[2])});
    }
    return out;
  }
  auto& llama = dynamic_cast<models::LlamaForCausalLM&>(model);
  const auto& c = llama.config();
  nn::RotaryEmbedding rope(c.head_dim(), c.rope_theta, c.max_position_embeddings, c.rope_scaling);
  const int64_t B = full.hidden_states[0].size(0);
  auto [cos, sin] = rope.cos_sin(torch::arange(n).unsqueeze(0).expand({B, n}), n, torch::kFloat);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto layer = llama.model->layers->ptr<models::LlamaDecoderLayerImpl>(l);
    at::Tensor a = layer->input_layernorm->forward(full.hidden_states[l].narrow(1, 0, n));
    auto heads = [&](const at::Tensor& t) { return nn::split_heads(t, c.num_key_value_heads, c.head_dim()); };
    out.push_back({nn::apply_rotary(heads(layer->self_attn->k_proj->forward(a)), cos, sin),
                   heads(layer->self_attn->v_proj->forward(a))});
  }
  return out;
}

class Decoders : public ::testing::TestWithParam<std::string> {};

TEST_P(Decoders, PrefixOfCachedKeysValuesReproducesTheLongerSequence) {
  // HF passes a prefix as past_key_values: the tokens after it must see exactly what they would
  // see after the real tokens (positions from p, causal window shifted, RoPE not re-applied).
  auto model = tiny_model(GetParam());
  model->eval();
  torch::manual_seed(2);
  const int64_t p = 4, T = 5;
  at::Tensor ids = torch::randint(2, 61, {2, p + T}, torch::kLong);
  models::ModelInputs whole;
  whole.input_ids = ids;
  whole.output_hidden_states = true;
  torch::NoGradGuard g;
  auto full = model->forward(whole);
  models::ModelInputs tail;
  tail.input_ids = ids.narrow(1, p, T);
  tail.attention_mask = torch::ones({2, T}, torch::kLong);
  tail.attention_prefix = cached_prefix(*model, full, p);
  auto out = model->forward(tail);
  EXPECT_LT(max_abs_diff(out.logits, full.logits.narrow(1, p, T)), 2e-6);
  EXPECT_GT(max_abs_diff(out.logits, model->forward(models::ModelInputs{tail.input_ids}).logits), 1e-3)
      << "the prefix must matter";
}

INSTANTIATE_TEST_SUITE_P(Prompt, Decoders, ::testing::Values("gpt2", "llama"));

class TextFamilies : public ::testing::TestWithParam<std::string> {};

TEST_P(TextFamilies, PromptOfWordEmbeddingsEqualsThoseTokensInFront) {
  // Virtual tokens are input embeddings: set them to real tokens' and the model must see the
  // concatenated sequence (positions, segments, mask and labels extended as HF does).
  const auto family = GetParam();
  auto base = tiny_model(family);
  base->eval();
  PeftModel model(base);
  model.add_adapter("default", *config({{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}}));
  const at::Tensor front = torch::tensor({5, 9, 17}, torch::kLong);
  torch::NoGradGuard g;
  model.adapter_state_dict("default").at("prompt_embeddings").copy_(base->input_embeddings().index_select(0, front));

  auto batch = tiny_batch(family);
  auto prompted = model.forward(batch);
  models::ModelInputs joined = batch;
  joined.input_ids = torch::cat({front.unsqueeze(0).expand({2, 3}), batch.input_ids}, 1);
  joined.attention_mask = torch::cat({torch::ones({2, 3}, torch::kLong), batch.attention_mask}, 1);
  if (batch.token_type_ids.defined())
    joined.token_type_ids = torch::cat({torch::zeros({2, 3}, torch::kLong), batch.token_type_ids}, 1);
  if (!is_classifier(family))
    joined.labels = torch::cat({torch::full({2, 3}, -100, torch::kLong), batch.labels}, 1);
  auto reference = base->forward(joined);
  EXPECT_LT(max_abs_diff(prompted.logits, reference.logits), 1e-6);
  EXPECT_LT(std::abs(prompted.loss.item<double>() - reference.loss.item<double>()), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Prompt, TextFamilies, ::testing::Values("gpt2", "bert", "roberta", "llama"));

TEST(PromptTuning, ClassifiesOnTheLastRealTokenAfterVirtualOnes) {
  // A decoder classifier pools the last non-pad token: the virtual tokens shift it by p.
  auto cfg = tiny_config("llama");
  cfg["architectures"] = {"LlamaForSequenceClassification"};
  cfg["num_labels"] = 3;
  cfg["pad_token_id"] = 0;
  torch::manual_seed(4);
  auto base = models::create_model(cfg);
  base->eval();
  PeftModel model(base);
  model.add_adapter("default", *config({{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 2}, {"task_type", "SEQ_CLS"}}));
  auto batch = tiny_batch("llama");
  batch.labels = torch::tensor({1, 2}, torch::kLong);
  torch::NoGradGuard g;
  auto padded = model.forward(batch);
  models::ModelInputs alone;  // row 1 without its padding
  alone.input_ids = batch.input_ids.index({Slice(1, 2), Slice(0, 6)});
  alone.attention_mask = torch::ones({1, 6}, torch::kLong);
  EXPECT_LT(max_abs_diff(model.forward(alone).logits[0], padded.logits[1]), 1e-6);
}

TEST(PromptTuning, InitsFromTheVocabularyAndFromText) {
  const std::string dir = std::string(PEFT_SOURCE_DIR) + "/examples/models/tiny-gpt2-en";
  auto base = models::load_pretrained(dir);
  const at::Tensor words = base->input_embeddings();
  {
    PeftModel model(base);
    torch::manual_seed(1);
    model.add_adapter("default", *config({{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 6},
                                          {"prompt_tuning_init", "SAMPLE_VOCAB"}}));
    auto table = model.adapter_state_dict("default").at("prompt_embeddings");
    for (int64_t i = 0; i < 6; ++i)
      EXPECT_TRUE((words == table[i]).all(1).any().item<bool>()) << "row " << i << " is no vocabulary row";
  }
  PeftModel model(models::load_pretrained(dir));
  const std::string text = "Classify this mail as spam or ham";
  model.add_adapter("default", *config({{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 20},
                                        {"prompt_tuning_init", "TEXT"}, {"prompt_tuning_init_text", text},
                                        {"tokenizer_name_or_path", dir}}));
  auto ids = tokenizers::load_tokenizer(dir)->encode(text);
  ASSERT_LT(ids.size(), 20u);
  auto table = model.adapter_state_dict("default").at("prompt_embeddings");
  for (int64_t i = 0; i < 20; ++i)  // the text's tokens, repeated and cut to p (HF's rule)
    EXPECT_TRUE(bit_equal(table[i], words[ids[static_cast<size_t>(i) % ids.size()]])) << i;

  PeftModel tiny(tiny_model("gpt2"));  // 61 tokens: the real tokenizer's ids do not fit
  try {
    tiny.add_adapter("default", *config({{"peft_type", "PROMPT_TUNING"}, {"prompt_tuning_init", "TEXT"},
                                         {"prompt_tuning_init_text", text}, {"tokenizer_name_or_path", dir}}));
    FAIL() << "out-of-vocabulary init accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  }
}

struct Reparameterized {
  std::string name;
  nlohmann::json config;
};

class Encoders : public ::testing::TestWithParam<Reparameterized> {};

TEST_P(Encoders, SaveKeepsOnlyTheOutputAndLoadingNeedsNoEncoder) {
  auto base = tiny_model("gpt2");
  base->eval();
  PeftModel model(base);
  model.add_adapter("default", *config(GetParam().config));
  const int64_t trained = element_count(model.trainable_parameters());
  TempDir dir;
  checkpoint::save_adapter(model, dir.file("delta"));
  safetensors::File file(dir.file("delta/adapter_model.safetensors"));
  ASSERT_EQ(file.tensors().size(), 1u);
  const auto& t = file.tensors().front();
  EXPECT_EQ(t.name, "prompt_embeddings");
  torch::NoGradGuard g;
  auto expected = model.forward(tiny_batch("gpt2")).logits;

  for (bool trainable : {false, true}) {
    PeftModel fresh(tiny_model("gpt2"));
    fresh.eval();
    checkpoint::LoadOptions opts;
    opts.is_trainable = trainable;
    checkpoint::load_adapter(fresh, dir.file("delta"), "default", opts);
    EXPECT_FALSE(fresh.prompt_encoder("default")->has_encoder());
    EXPECT_TRUE(bit_equal(fresh.forward(tiny_batch("gpt2")).logits, expected));
    const int64_t table = t.shape[0] * t.shape[1];
    EXPECT_EQ(element_count(fresh.trainable_parameters()), trainable ? table : 0);
    EXPECT_LT(table, trained) << "the encoder was the larger part";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Prompt, Encoders,
    ::testing::Values(
        Reparameterized{"prefix_projection", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 4}, {"prefix_projection", true}, {"encoder_hidden_size", 40}}},
        Reparameterized{"p_tuning_mlp", {{"peft_type", "P_TUNING"}, {"num_virtual_tokens", 4}, {"encoder_hidden_size", 40}}},
        Reparameterized{"p_tuning_lstm", {{"peft_type", "P_TUNING"}, {"num_virtual_tokens", 4}, {"encoder_reparameterization_type", "LSTM"}, {"encoder_num_layers", 2}, {"encoder_dropout", 0.1}}}),
    [](const auto& info) { return info.param.name; });

TEST(PromptMethods, ModulesToSaveTrainAndSaveUnderHFKeys) {
  // HF PEFT's PeftModel holds a prompt method's base model directly: trained module copies are
  // keyed "base_model.<path>", not the tuners' "base_model.model.<path>".
  auto cfg = tiny_config("gpt2");
  cfg["architectures"] = {"GPT2ForSequenceClassification"};
  cfg["num_labels"] = 2;
  cfg["pad_token_id"] = 0;
  const nlohmann::json method = {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}, {"task_type", "SEQ_CLS"},
                                 {"modules_to_save", {"ln_f"}}};
  EXPECT_EQ(config(method)->to_json()["modules_to_save"], nlohmann::json({"ln_f"}));
  EXPECT_FALSE(config({{"peft_type", "PROMPT_TUNING"}})->to_json().contains("modules_to_save"))
      << "HF PEFT releases before the field refuse the key";
  torch::manual_seed(2);
  auto base = models::create_model(cfg);
  base->eval();
  PeftModel model(base);
  model.add_adapter("default", *config(method));
  auto state = model.adapter_state_dict("default");
  std::vector<std::string> keys;
  for (const auto& [k, t] : state) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"base_model.score.weight", "base_model.transformer.ln_f.bias",
                                            "base_model.transformer.ln_f.weight", "prompt_embeddings"}));
  {
    torch::NoGradGuard g;
    for (auto& [k, t] : state) t.add_(torch::randn_like(t) * 0.1);  // as if trained
  }
  auto batch = tiny_batch("gpt2");
  batch.labels = torch::tensor({1, 0}, torch::kLong);
  torch::NoGradGuard g;
  const auto expected = model.forward(batch).logits;
  TempDir dir;
  checkpoint::save_adapter(model, dir.file("delta"));
  auto reload = [&](const std::string& delta) {
    torch::manual_seed(2);
    auto fresh_base = models::create_model(cfg);
    fresh_base->eval();
    PeftModel fresh(fresh_base);
    checkpoint::load_adapter(fresh, delta);
    return fresh.forward(batch).logits;
  };
  EXPECT_TRUE(bit_equal(reload(dir.file("delta")), expected));
  // A delta written with the tuners' spelling still loads.
  std::filesystem::create_directories(dir.file("old"));
  std::filesystem::copy_file(dir.file("delta/adapter_config.json"), dir.file("old/adapter_config.json"));
  safetensors::TensorMap old;
  for (const auto& [k, t] : safetensors::load_file(dir.file("delta/adapter_model.safetensors")))
    old[k == "prompt_embeddings" ? k : "base_model.model." + k.substr(std::string("base_model.").size())] = t;
  safetensors::save_file(dir.file("old/adapter_model.safetensors"), old);
  EXPECT_TRUE(bit_equal(reload(dir.file("old")), expected));
}

TEST(PrefixTuning, ZeroInitWeightsStartsFromAZeroPrefix) {
  for (bool projection : {false, true}) {
    nlohmann::json j = {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 3}, {"prefix_projection", projection},
                        {"init_weights", "zero"}};
    PeftModel model(tiny_model("gpt2"));
    model.add_adapter("default", *config(j));
    const auto table = model.adapter_state_dict("default").at("prompt_embeddings");
    EXPECT_EQ(table.abs().max().item<float>(), 0.0f) << "projection " << projection;
    EXPECT_GT(element_count(model.trainable_parameters()), 0);
    EXPECT_EQ(config(j)->to_json()["init_weights"], "zero");
    PeftModel random(tiny_model("gpt2"));
    j.erase("init_weights");
    random.add_adapter("default", *config(j));
    EXPECT_GT(random.adapter_state_dict("default").at("prompt_embeddings").abs().max().item<float>(), 0.0f);
    EXPECT_FALSE(config(j)->to_json().contains("init_weights")) << "HF PEFT releases before the field refuse the key";
  }
  EXPECT_NE(error_of([] { config({{"peft_type", "PREFIX_TUNING"}, {"init_weights", "ones"}})->validate(); })
                .find("init_weights must be null (random) or \"zero\", found 'ones'"),
            std::string::npos);
}

TEST(PrefixTuning, GroupedQueryModelsUseTheKeyValueGeometry) {
  PeftModel model(tiny_model("llama"));  // 6 heads, 2 key/value heads, head_dim 4, 2 layers
  model.add_adapter("default", *config({{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 5}}));
  auto saved = model.adapter_config("default").to_json();
  EXPECT_EQ(saved["token_dim"], 8);
  EXPECT_EQ(saved["num_attention_heads"], 2);
  EXPECT_EQ(saved["num_layers"], 2);
  EXPECT_EQ(model.adapter_state_dict("default").at("prompt_embeddings").sizes(), c10::IntArrayRef({5, 2 * 2 * 8}));
  try {
    PeftModel other(tiny_model("llama"));
    other.add_adapter("default", *config({{"peft_type", "PREFIX_TUNING"}, {"token_dim", 24}}));
    FAIL() << "a hidden-size token_dim was accepted for a GQA model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token_dim is 24, but this model needs 8"), std::string::npos) << e.what();
  }
}

TEST(PrefixTuning, LongerThanThePositionTableIsANamedError) {
  PeftModel model(tiny_model("gpt2"));  // n_positions 32
  model.add_adapter("default", *config({{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 30}}));
  try {
    model.forward(tiny_batch("gpt2"));  // 30 + 9 positions
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds n_positions 32"), std::string::npos) << e.what();
  }
}

TEST(LlamaAdapter, SevenBillionGeometryCountsAsThePaperWithoutBuildingIt) {
  // LLaMA-7B: 32 layers, hidden 4096, 32 heads; K = 10 prompts in the top L = 30 layers.
  const auto g = models::model_geometry({{"model_type", "llama"}, {"hidden_size", 4096}, {"num_hidden_layers", 32},
                                         {"num_attention_heads", 32}, {"intermediate_size", 11008},
                                         {"vocab_size", 32000}});
  const auto& method = methods::find_method("llama_adapter");
  auto paper = config({{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 10}, {"adapter_layers", 30}, {"gate", "per_head_tanh"}});
  EXPECT_EQ(method.count(*paper, g), 1229760);  // 10·30·4096 + 30·32
  auto hf = config({{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 10}, {"adapter_layers", 30}});
  EXPECT_EQ(method.count(*hf, g), 1228830);  // one scalar gate per layer
}

TEST(LlamaAdapter, LayersBelowTheAdaptedOnesRecordNoAutograd) {
  PeftModel model(tiny_model("llama"));
  model.add_adapter("default", *config({{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 3}, {"adapter_layers", 1}}));
  auto batch = tiny_batch("llama");
  batch.output_hidden_states = true;
  auto out = model.forward(batch);
  EXPECT_FALSE(out.hidden_states[1].requires_grad()) << "layer 0 built a graph";
  EXPECT_TRUE(out.hidden_states[2].requires_grad());
  EXPECT_TRUE(out.loss.requires_grad());
}

TEST(LlamaAdapter, PerHeadTanhGatesEqualTheScalarGateWhenAllHeadsAgree) {
  auto base = tiny_model("llama");
  base->eval();
  PeftModel model(base);
  model.add_adapter("scalar", *config({{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 3}}));
  model.add_adapter("paper", *config({{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 3}, {"gate", "per_head_tanh"}}));
  torch::NoGradGuard g;
  auto scalar = model.adapter_state_dict("scalar"), paper = model.adapter_state_dict("paper");
  for (auto& [key, t] : scalar) {
    if (key.find("adaption_prompt") != std::string::npos) paper.at(key).copy_(t);
    if (key.find("adaption_gate") != std::string::npos) {
      t.fill_(0.3);
      EXPECT_EQ(paper.at(key).sizes(), c10::IntArrayRef({1, 6, 1, 1}));
      paper.at(key).fill_(std::atanh(0.3));
    }
  }
  auto batch = tiny_batch("llama");
  model.set_adapter("scalar");
  auto a = model.forward(batch).logits;
  model.set_adapter("paper");
  auto b = model.forward(batch).logits;
  EXPECT_LT(max_abs_diff(a, b), 1e-6);
  model.disable_adapters();
  EXPECT_GT(max_abs_diff(a, model.forward(batch).logits), 1e-4);
}

TEST(LlamaAdapter, UnknownTargetAndTooManyLayersAreNamed) {
  PeftModel model(tiny_model("gpt2"));
  try {
    model.add_adapter("a", *config({{"peft_type", "ADAPTION_PROMPT"}, {"target_modules", "self_attn"}}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("transformer.h.0.attn"), std::string::npos) << e.what();
  }
  try {
    model.add_adapter("b", *config({{"peft_type", "ADAPTION_PROMPT"}, {"adapter_layers", 3}}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("adapter_layers is 3, but the model has 2"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(model.adapters().empty()) << "nothing half-attached";
  EXPECT_TRUE(model.base_model().attention_adapters().front().second->state("a").empty());
}

}  // namespace
}  // namespace peft::test
