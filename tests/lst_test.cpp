// LST beyond the conformance suite: at full width a pruned copy with identity ladders computes
// exactly the backbone (so the taps, the side's stream and the head hand-over are right on every
// family, T5's encoder and decoder included); the backbone builds no autograd graph; pruning
// keeps the most important coordinates;
// Fisher initialization reads gradients and leaves the base untouched; counts and errors.
#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/data/batch_source.h"
#include "peft/generate.h"
#include "peft/methods/lst/lst.h"
#include "peft/methods/method.h"
#include "peft/nn/kv_cache.h"
#include "peft/peft_model.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

std::shared_ptr<methods::MethodConfig> lst_config(nlohmann::json extra, const std::string& family) {
  nlohmann::json j = {{"peft_type", "LST"},
                      {"task_type", is_classifier(family) ? "SEQ_CLS" : family == "t5" ? "SEQ_2_SEQ_LM" : "CAUSAL_LM"}};
  j.update(extra);
  return methods::parse_config(j);
}

class LstFamilies : public ::testing::TestWithParam<std::string> {};

TEST_P(LstFamilies, FullWidthPrunedCopyWithIdentityLaddersIsTheBackbone) {
  const std::string family = GetParam();
  auto base = tiny_model(family);
  base->eval();
  torch::NoGradGuard g;
  auto ref = base->forward(tiny_batch(family)).logits.clone();
  PeftModel model(base);
  model.add_adapter("default", *lst_config({{"reduction_factor", 1}}, family));
  auto state = model.adapter_state_dict("default");
  const int64_t d = base->hidden_size();
  std::vector<std::string> identities = {"side_network.first_downsample", "side_network.upsample"};
  if (family == "t5") identities.push_back("side_network.decoder_first_downsample");
  for (const auto& lin : identities) {
    state.at(lin + ".weight").copy_(torch::eye(d));
    state.at(std::string(lin) + ".bias").zero_();
  }
  state.at("side_network.gate_alphas").fill_(100.0);  // μ = σ(100 / T) = 1: the side follows its own stream
  EXPECT_LT(max_abs_diff(model.forward(tiny_batch(family)).logits, ref), 1e-5);
  // Opening the gates (μ = 0) makes every side block read the ladder instead: the output moves.
  state.at("side_network.gate_alphas").fill_(-100.0);
  EXPECT_GT(max_abs_diff(model.forward(tiny_batch(family)).logits, ref), 1e-4);
}

TEST_P(LstFamilies, BackboneBuildsNoGraphOnlyTheSideTrains) {
  const std::string family = GetParam();
  auto base = tiny_model(family);
  PeftModel model(base);
  model.add_adapter("default", *lst_config({{"reduction_factor", 2}}, family));
  model.train();
  // Even a backbone weight that asks for gradients gets none: the backbone runs under no-grad.
  std::vector<std::pair<std::string, at::Tensor>> blocks;
  for (auto& p : base->named_parameters())
    if (p.key().find(base->layers_pattern() + ".") != std::string::npos && p.key().rfind("side_network.", 0) != 0) {
      p.value().set_requires_grad(true);
      blocks.emplace_back(p.key(), p.value());
    }
  ASSERT_FALSE(blocks.empty());
  model.forward(tiny_batch(family)).loss.backward();
  for (auto& [name, p] : blocks) EXPECT_FALSE(p.grad().defined()) << name;
  int64_t with_grad = 0;
  for (auto& [key, t] : model.adapter_state_dict("default"))
    if (key.find("side_network.") != std::string::npos) {
      EXPECT_TRUE(t.grad().defined()) << key;
      with_grad += t.grad().defined();
    }
  EXPECT_GT(with_grad, 10);
  for (auto& [name, p] : blocks) p.set_requires_grad(false);
}

const std::vector<std::string>& lst_families() {
  static const std::vector<std::string> f = [] {
    auto out = tiny_families();
    out.push_back("t5");  // an encoder-decoder: a side encoder and a side decoder
    return out;
  }();
  return f;
}

INSTANTIATE_TEST_SUITE_P(Families, LstFamilies, ::testing::ValuesIn(lst_families()),
                         [](const auto& info) { return info.param; });

TEST(Lst, T5SideHasAnEncoderAndADecoderWithTheirOwnLaddersAndLayers) {
  auto base = tiny_model("t5");  // d_model 24, d_kv 6, 4 heads, d_ff 40 (gated), 2 + 3 layers
  PeftModel model(base);
  model.add_adapter("default", *lst_config({{"reduction_factor", 2}, {"side_layers", {1}}, {"side_decoder_layers", {0, 2}}}, "t5"));
  auto state = model.adapter_state_dict("default");
  auto has = [&](const std::string& suffix) {
    for (const auto& [k, t] : state)
      if (k.size() >= suffix.size() && k.compare(k.size() - suffix.size(), suffix.size(), suffix) == 0) return true;
    return false;
  };
  EXPECT_TRUE(has("side.encoder.block.0.layer.0.SelfAttention.q.weight"));
  EXPECT_FALSE(has("side.encoder.block.1.layer.0.SelfAttention.q.weight")) << "one encoder side block";
  EXPECT_TRUE(has("side.decoder.block.1.layer.1.EncDecAttention.k.weight"));
  EXPECT_FALSE(has("side.decoder.block.2.layer.0.SelfAttention.q.weight")) << "two decoder side blocks";
  EXPECT_TRUE(has("side.decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"));
  EXPECT_TRUE(has("side_network.decoder_first_downsample.weight"));
  EXPECT_EQ(state.at("side_network.gate_alphas").numel(), 3);
  EXPECT_EQ(state.at("side_network.side.encoder.block.0.layer.0.SelfAttention.q.weight").sizes(),
            (std::vector<int64_t>{4 * 3, 12}));
  // The side copies the backbone's relative position bias whole (its heads stay), from the
  // stack's first layer even where the side block sits on a later one.
  auto params = base->named_parameters();
  EXPECT_TRUE(bit_equal(state.at("side_network.side.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                        params["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]));
  // Generation reruns the side on every step (no cache): it runs, and refuses a cache by name.
  model.eval();
  torch::NoGradGuard g;
  auto batch = tiny_batch("t5");
  auto out = model.forward(batch);
  EXPECT_EQ(out.logits.size(1), batch.labels.size(1));
  auto with_cache = batch;
  with_cache.kv_cache = std::make_shared<nn::KVCache>();
  EXPECT_NE(error_of([&] { model.forward(with_cache); }).find("use_cache = false"), std::string::npos);
  // generate() decodes an LST adapter without a cache by itself: the same tokens as asked uncached.
  GenerationConfig gen;
  gen.max_new_tokens = 4;
  const auto by_default = generate(model, {5, 6, 7, 1}, gen);
  gen.use_cache = false;
  EXPECT_EQ(by_default.tokens, generate(model, {5, 6, 7, 1}, gen).tokens);
  EXPECT_FALSE(by_default.tokens.empty());
  auto with_encoder_outputs = batch;
  with_encoder_outputs.encoder_outputs = out.encoder_last_hidden_state;
  EXPECT_NE(error_of([&] { model.forward(with_encoder_outputs); }).find("encoder_outputs"), std::string::npos);
}

TEST(Lst, T5ErrorsNameTheOption) {
  PeftModel model(tiny_model("t5"));
  EXPECT_NE(error_of([&] { model.add_adapter("a", *lst_config({{"reduction_factor", 4}}, "t5")); }).find("d_kv 6"),
            std::string::npos);
  EXPECT_NE(error_of([&] { model.add_adapter("b", *lst_config({{"side_decoder_layers", {3}}}, "t5")); })
                .find("side_decoder_layers: layer 3"),
            std::string::npos);
  PeftModel gpt2(tiny_model("gpt2"));
  EXPECT_NE(error_of([&] { gpt2.add_adapter("c", *lst_config({{"side_decoder_layers", {0}}}, "gpt2")); })
                .find("side_decoder_layers"),
            std::string::npos);
  EXPECT_NE(error_of([] { lst_config({{"side_decoder_layers", {1, 0}}}, "t5")->validate(); }).find("increasing"),
            std::string::npos);
}

TEST(Lst, CountMatchesTheSideNetworkFormula) {
  auto base = tiny_model("gpt2");  // d = 32, 4 heads, d_ff = 128, 2 layers
  PeftModel model(base);
  model.add_adapter("default", *lst_config({{"reduction_factor", 4}, {"side_layers", {1}}}, "gpt2"));
  const int64_t d = 32, ds = 8, fs = 32, n = 1;
  const int64_t block = 2 * ds + (ds * 3 * ds + 3 * ds) + (ds * ds + ds) + 2 * ds + (ds * fs + fs) + (fs * ds + ds);
  const int64_t expected = n * block + 2 * ds /* ln_f */ + (d * ds + ds) * (1 + n) /* first + ladders */ +
                           (ds * d + d) /* upsample */ + n /* gates */;
  EXPECT_EQ(model.count_parameters().trainable, expected);
  auto state = model.adapter_state_dict("default");
  EXPECT_TRUE(state.count("base_model.model.side_network.side.h.0.attn.c_attn.weight") ||
              state.count("side_network.side.h.0.attn.c_attn.weight"));
}

TEST(Lst, MagnitudePruningKeepsTheHeaviestCoordinatesAndNeurons) {
  auto base = tiny_model("bert");  // d = 24, d_ff = 40, 3 heads
  const std::vector<int64_t> residual = {2, 5, 7, 11, 13, 19}, neurons = {0, 3, 9, 10, 21, 22, 30, 31, 38, 39};
  {
    torch::NoGradGuard g;
    for (auto& p : base->named_parameters()) {
      if (p.key().find("encoder") == std::string::npos) continue;
      if (p.key().find("LayerNorm.weight") != std::string::npos)
        for (int64_t i : residual) p.value()[i].mul_(1000.0);
      if (p.key().find("intermediate.dense.weight") != std::string::npos)
        for (int64_t i : neurons) p.value()[i].mul_(1000.0);
    }
  }
  PeftModel model(base);
  model.add_adapter("default", *lst_config({{"reduction_factor", 4}}, "bert"));
  auto state = model.adapter_state_dict("default");
  auto params = base->named_parameters();
  auto side = [&](const std::string& name) {
    for (auto& [k, t] : state)
      if (k.size() >= name.size() && k.compare(k.size() - name.size(), name.size(), name) == 0) return t;
    ADD_FAILURE() << "no side tensor " << name;
    return at::Tensor();
  };
  for (int l = 0; l < 2; ++l) {
    const std::string layer = "encoder.layer." + std::to_string(l);
    EXPECT_TRUE(bit_equal(side(layer + ".output.LayerNorm.weight"),
                          params["bert." + layer + ".output.LayerNorm.weight"].index_select(0, torch::tensor(residual))));
    EXPECT_TRUE(bit_equal(side(layer + ".intermediate.dense.weight"),
                          params["bert." + layer + ".intermediate.dense.weight"]
                              .index_select(0, torch::tensor(neurons))
                              .index_select(1, torch::tensor(residual))));
  }
}

TEST(Lst, FisherInitReadsGradientsAndLeavesTheBaseUntouched) {
  auto base = tiny_model("gpt2");
  std::map<std::string, at::Tensor> before;
  for (auto& p : base->named_parameters()) before[p.key()] = p.value().detach().clone();
  PeftModel model(base);
  model.add_adapter_without_data("default", *lst_config({{"reduction_factor", 2}, {"side_init", "fisher"}}, "gpt2"));
  std::map<std::string, at::Tensor> magnitude;
  for (auto& [k, t] : model.adapter_state_dict("default")) magnitude[k] = t.detach().clone();
  model.prepare_adapter("default", data::FixedBatches({tiny_batch("gpt2"), tiny_batch("gpt2")}));
  int64_t changed = 0;
  for (auto& [k, t] : model.adapter_state_dict("default")) changed += !bit_equal(t, magnitude.at(k));
  EXPECT_GT(changed, 0) << "Fisher importance picked the same structure as magnitude everywhere";
  for (auto& p : base->named_parameters()) {
    if (p.key().rfind("side_network.", 0) == 0) continue;
    EXPECT_FALSE(p.value().requires_grad()) << p.key();
    EXPECT_FALSE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(bit_equal(p.value(), before.at(p.key()))) << p.key();
  }
  EXPECT_FALSE(model.trainable_parameters().empty());
}

TEST(Lst, ErrorsNameTheOption) {
  auto base = tiny_model("gpt2");
  PeftModel model(base);
  EXPECT_NE(error_of([&] { model.add_adapter("a", *lst_config({{"reduction_factor", 3}}, "gpt2")); }).find("reduction_factor 3"),
            std::string::npos);
  EXPECT_NE(error_of([&] { model.add_adapter("b", *lst_config({{"side_layers", {5}}}, "gpt2")); }).find("side_layers"),
            std::string::npos);
  EXPECT_NE(error_of([] { lst_config({{"side_init", "clever"}}, "gpt2")->validate(); }).find("side_init"), std::string::npos);
  EXPECT_NE(error_of([] { lst_config({{"output", "both"}}, "gpt2")->validate(); }).find("output"), std::string::npos);
  EXPECT_TRUE(model.adapters().empty()) << "a failed attach leaves nothing behind";
  auto llama = tiny_model("llama");  // head_dim 4: r = 4 leaves 1, which rotary cannot pair
  PeftModel lm(llama);
  EXPECT_NE(error_of([&] { lm.add_adapter("a", *lst_config({{"reduction_factor", 4}}, "llama")); }).find("even"),
            std::string::npos);
}

}  // namespace
}  // namespace peft::test
