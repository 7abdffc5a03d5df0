// T5 (encoder-decoder) against Hugging Face: the fixture model's logits, loss and every encoder and
// decoder hidden state; HF PEFT's LoRA and IA³ deltas for it (outputs, merged outputs, the saved
// files); the pieces HF's code fixes (label shifting, relative position buckets); other geometries.
#include <filesystem>
#include <map>
#include <numeric>

#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/models/t5.h"
#include "peft/peft_model.h"
#include "peft/privacy/per_sample_gradients.h"
#include "test_util.h"

namespace peft::test {
namespace {

models::ModelInputs t5_inputs() { return fixture_inputs("hf/models/t5/inputs.safetensors"); }

/// `steps` AdamW steps (lr 1e-2) on the fixture batch: the first and the last loss.
std::pair<double, double> train_on_fixture(PeftModel& model, int steps) {
  model.train();
  torch::optim::AdamW opt(model.trainable_parameters(), torch::optim::AdamWOptions(1e-2));
  double first = 0, last = 0;
  for (int step = 0; step < steps; ++step) {
    opt.zero_grad();
    auto loss = model.forward(t5_inputs()).loss;
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  return {first, last};
}

/// Saves `model`'s delta to `dir` and loads it onto a fresh fixture base: the logits must be bit-equal.
void expect_reload_is_bit_exact(PeftModel& model, const std::string& dir, const std::string& what) {
  model.eval();
  checkpoint::save_adapter(model, dir);
  torch::NoGradGuard g;
  const at::Tensor expected = model.forward(t5_inputs()).logits;
  PeftModel again(models::load_pretrained(fixture("hf/models/t5")));
  checkpoint::load_adapter(again, dir);
  again.eval();
  EXPECT_TRUE(bit_equal(again.forward(t5_inputs()).logits, expected)) << what;
}

TEST(T5, MatchesHuggingFaceLogitsLossAndEveryHiddenState) {
  auto model = models::load_pretrained(fixture("hf/models/t5"));
  EXPECT_EQ(model->architecture(), "T5ForConditionalGeneration");
  model->eval();
  torch::NoGradGuard g;
  const auto out = model->forward(t5_inputs());
  ASSERT_EQ(out.encoder_hidden_states.size(), 3u);
  ASSERT_EQ(out.hidden_states.size(), 3u);
  const double diff = max_output_diff(out, "hf/models/t5/outputs.safetensors");
  RecordProperty("max_abs_diff", fmt::format("{:.3e}", diff));
  EXPECT_LT(diff, 1e-5);
}

TEST(T5, LabelsShiftRightIntoTheDecoderAsHuggingFaceDoes) {
  auto model = models::load_pretrained(fixture("hf/models/t5"));
  model->eval();
  torch::NoGradGuard g;
  auto in = t5_inputs();
  const auto with_labels = model->forward(in);
  // decoder_input_ids = [start, labels[:-1]] with -100 -> pad (both 0 here).
  at::Tensor shifted = torch::zeros_like(in.labels);
  shifted.slice(1, 1).copy_(in.labels.slice(1, 0, -1));
  shifted.masked_fill_(shifted == -100, 0);
  in.decoder_input_ids = shifted;
  const auto given = model->forward(in);
  EXPECT_TRUE(bit_equal(given.logits, with_labels.logits));
  in.labels = at::Tensor();
  EXPECT_FALSE(model->forward(in).loss.defined());
  in.decoder_input_ids = at::Tensor();
  EXPECT_NE(error_of([&] { model->forward(in); }).find("decoder_input_ids or labels"), std::string::npos);
}

TEST(T5, HiddenStateTapsNumberTheEncoderThenTheDecoderAndEmbeddingsMayBeGiven) {
  auto model = std::dynamic_pointer_cast<models::T5ForConditionalGeneration>(models::load_pretrained(fixture("hf/models/t5")));
  ASSERT_TRUE(model);
  model->eval();
  torch::NoGradGuard g;
  auto in = t5_inputs();
  const auto ref = model->forward(in);
  const int64_t enc = model->config().num_layers, dec = model->config().num_decoder_layers;
  // An identity hook sees every boundary, encoder first, and changes nothing.
  std::vector<int64_t> seen;
  std::map<int64_t, at::Tensor> streams;
  auto tapped = in;
  tapped.stream_hook = [&](int64_t i, const at::Tensor& h) {
    seen.push_back(i);
    streams[i] = h.clone();
    return h;
  };
  at::Tensor final_seen;
  tapped.final_hidden_hook = [&](const at::Tensor& h) {
    final_seen = h.clone();
    return h;
  };
  const auto out = model->forward(tapped);
  std::vector<int64_t> expected(static_cast<size_t>(enc + dec + 2));
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(seen, expected);
  EXPECT_TRUE(bit_equal(out.logits, ref.logits));
  EXPECT_TRUE(bit_equal(final_seen, ref.last_hidden_state)) << "the final hook reads the decoder's output";
  EXPECT_TRUE(bit_equal(model->encoder->final_layer_norm->forward(streams.at(enc)), ref.encoder_last_hidden_state))
      << "the encoder's last tap is its stream before the final norm";
  EXPECT_TRUE(bit_equal(streams.at(0), model->shared->forward(in.input_ids)));
  at::Tensor shifted = torch::full_like(in.labels, model->config().decoder_start_token_id);
  shifted.slice(1, 1).copy_(in.labels.slice(1, 0, -1));
  shifted.masked_fill_(shifted == -100, model->config().pad_token_id);
  EXPECT_TRUE(bit_equal(streams.at(enc + 1), model->shared->forward(shifted)));
  // What a hook returns flows on: doubling the decoder's output doubles the (linear) head's logits.
  tapped.stream_hook = nullptr;
  tapped.final_hidden_hook = [](const at::Tensor& h) { return h * 2; };
  EXPECT_LT(max_abs_diff(model->forward(tapped).logits, ref.logits * 2), 1e-5);
  // Embedding outputs given instead of token ids: the same model output.
  auto given = in;
  given.input_ids = at::Tensor();
  given.embedding_output = streams.at(0);
  given.decoder_embedding_output = streams.at(enc + 1);
  const auto from_embeddings = model->forward(given);
  EXPECT_TRUE(bit_equal(from_embeddings.logits, ref.logits));
  EXPECT_TRUE(bit_equal(from_embeddings.loss, ref.loss));
  // Bad shapes and combinations are named.
  auto bad = given;
  bad.embedding_output = streams.at(0).narrow(2, 0, 3);
  EXPECT_NE(error_of([&] { model->forward(bad); }).find("embedding_output has shape"), std::string::npos);
  bad = given;
  bad.decoder_embedding_output = streams.at(enc + 1).narrow(1, 0, 2);
  EXPECT_NE(error_of([&] { model->forward(bad); }).find("labels has shape"), std::string::npos);
  bad = given;
  bad.prompt_embeds = torch::zeros({in.input_ids.size(0), 2, model->config().d_model});
  EXPECT_NE(error_of([&] { model->forward(bad); }).find("prompt_embeds"), std::string::npos);
}

TEST(T5, RelativePositionBucketsFollowHuggingFacesFormula) {
  // num_buckets 8, max_distance 20: bidirectional halves to 4 per side, exact below 2, then log.
  const at::Tensor rel = torch::arange(-25, 26, torch::kLong);
  const at::Tensor bi = models::t5_relative_position_bucket(rel, true, 8, 20);
  const at::Tensor causal = models::t5_relative_position_bucket(rel, false, 8, 20);
  auto at_ = [&](const at::Tensor& b, int64_t r) { return b[r + 25].item<int64_t>(); };
  // Values of HF's _relative_position_bucket for the same arguments.
  EXPECT_EQ(at_(bi, 0), 0);
  EXPECT_EQ(at_(bi, -1), 1);
  EXPECT_EQ(at_(bi, 1), 5);  // keys after the query take the upper half
  EXPECT_EQ(at_(bi, -2), 2);  // 2 + trunc(log(2/2) / log(20/2) · 2)
  EXPECT_EQ(at_(bi, -7), 3);  // 2 + trunc(log(3.5) / log(10) · 2) = 2 + trunc(1.09)
  EXPECT_EQ(at_(bi, 2), 6);
  EXPECT_EQ(at_(bi, 25), 7);   // clipped to the half's last bucket
  EXPECT_EQ(at_(bi, -25), 3);
  EXPECT_EQ(at_(causal, 3), 0);  // the decoder's future keys share bucket 0 (masked anyway)
  EXPECT_EQ(at_(causal, -1), 1);
  EXPECT_EQ(at_(causal, -3), 3);  // exact below 4
  EXPECT_EQ(at_(causal, -25), 7);
}

TEST(T5, EncoderModelReadsTheEncoderOfAFullCheckpoint) {
  auto full = models::load_pretrained(fixture("hf/models/t5"));
  auto config = core::read_json_file(fixture("hf/models/t5/config.json"));
  config["architectures"] = {"T5EncoderModel"};
  auto encoder = models::create_model(config);
  EXPECT_EQ(encoder->architecture(), "T5EncoderModel");
  models::load_weights(*encoder, fixture("hf/models/t5"));
  torch::NoGradGuard g;
  full->eval();
  encoder->eval();
  auto in = t5_inputs();
  const auto reference = full->forward(in).encoder_last_hidden_state;
  in.labels = at::Tensor();
  EXPECT_TRUE(bit_equal(encoder->forward(in).last_hidden_state, reference));
}

TEST(T5, GatedUntiedGeometriesBuildTrainAndRefuseBadConfigs) {
  nlohmann::json c = core::read_json_file(fixture("hf/models/t5/config.json"));
  c["feed_forward_proj"] = "gated-gelu";
  c["tie_word_embeddings"] = false;
  c["num_decoder_layers"] = 3;
  c["d_kv"] = 5;  // heads · d_kv need not equal d_model
  auto model = models::create_model(c);
  auto names = model->named_parameters();
  EXPECT_TRUE(names.contains("decoder.block.2.layer.2.DenseReluDense.wi_1.weight"));
  EXPECT_TRUE(names.contains("lm_head.weight"));
  EXPECT_EQ(names["encoder.block.0.layer.0.SelfAttention.q.weight"].sizes(), (std::vector<int64_t>{20, 32}));
  PeftModel peft(model);
  peft.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"task_type", "SEQ_2_SEQ_LM"}, {"r", 2}}));
  const auto [first, last] = train_on_fixture(peft, 6);
  EXPECT_LT(last, first);
  c["feed_forward_proj"] = "gated-gelu-x";
  EXPECT_NE(error_of([&] { models::create_model(c); }).find("feed_forward_proj"), std::string::npos);
  c["feed_forward_proj"] = "relu";
  c["num_heads"] = 0;
  EXPECT_NE(error_of([&] { models::create_model(c); }).find("num_heads"), std::string::npos);
}

TEST(T5, PerSampleGradientsOfLoraEqualThePerExampleLoopInFloat64) {
  models::LoadOptions o;
  o.dtype = torch::kFloat64;
  PeftModel model(models::load_pretrained(fixture("hf/models/t5"), o));
  model.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"task_type", "SEQ_2_SEQ_LM"}, {"r", 2},
                                                       {"target_modules", {"q", "v", "wo"}}}));
  {
    torch::NoGradGuard g;
    torch::manual_seed(2);
    for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * 0.2);
  }
  model.eval();
  const auto params = model.trainable_parameters();
  const auto in = t5_inputs();
  privacy::PerSampleBatch batched([&](const models::ModelInputs& x) { return model.forward(x); }, in, params);
  ASSERT_TRUE(batched.ok()) << batched.why();
  for (int64_t i = 0; i < 2; ++i) {
    models::ModelInputs one = in;
    const at::Tensor row = torch::tensor({i});
    one.input_ids = in.input_ids.index_select(0, row);
    one.attention_mask = in.attention_mask.index_select(0, row);
    one.labels = in.labels.index_select(0, row);
    for (const auto& p : params) p.mutable_grad().reset();
    model.forward(one).loss.backward();
    for (size_t k = 0; k < params.size(); ++k)
      EXPECT_LT(max_abs_diff(batched.gradient(k)[i], params[k].grad()), 1e-10) << "example " << i << " tensor " << k;
  }
}

TEST(T5, GradientCheckpointingKeepsLoraGradients) {
  // Equal up to rounding, not bit for bit: every decoder block's gradient of the encoder output
  // reaches it through its own recomputation, summed in another order.
  std::vector<at::Tensor> reference;
  for (const bool checkpointing : {false, true}) {
    PeftModel model(models::load_pretrained(fixture("hf/models/t5")));
    torch::manual_seed(9);  // the same random (non-zero) delta both times
    model.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"task_type", "SEQ_2_SEQ_LM"}, {"r", 2},
                                                         {"target_modules", {"q", "v", "wo"}}, {"init_lora_weights", false}}));
    model.base_model().set_gradient_checkpointing(checkpointing);
    model.train();
    model.forward(t5_inputs()).loss.backward();
    for (size_t k = 0; k < model.trainable_parameters().size(); ++k) {
      const at::Tensor g = model.trainable_parameters()[k].grad();
      ASSERT_TRUE(g.defined());
      if (!checkpointing) reference.push_back(g.clone());
      else EXPECT_LT(max_abs_diff(g, reference[k]), 1e-6 * std::max(1.0, reference[k].abs().max().item<double>())) << k;
    }
  }
}

TEST(T5, LinearAndBlockSlotMethodsTrainSaveAndLoadOnT5) {
  const std::vector<nlohmann::json> configs = {
      {{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"q", "k", "v", "o", "wi", "wo"}}},
      {{"peft_type", "IA3"}},
      {{"peft_type", "DSEE"}, {"r", 2}, {"num_sparse", 8}, {"grebsmo_iterations", 3}},
      {{"peft_type", "BITFIT"}, {"add_missing_biases", true}},
      {{"peft_type", "BOTTLENECK_ADAPTER"}, {"preset", "houlsby"}, {"bottleneck_size", 4}}};
  for (nlohmann::json cfg : configs) {
    cfg["task_type"] = "SEQ_2_SEQ_LM";
    PeftModel model(models::load_pretrained(fixture("hf/models/t5")));
    model.add_adapter("default", *methods::parse_config(cfg));
    const auto params = model.trainable_parameters();
    ASSERT_FALSE(params.empty()) << cfg.dump();
    const auto [first, last] = train_on_fixture(model, 5);
    EXPECT_LT(last, first) << cfg.dump();
    // Batched per-sample gradients cover every one of these methods on T5.
    privacy::PerSampleBatch ps([&](const models::ModelInputs& x) { return model.forward(x); }, t5_inputs(), params);
    EXPECT_TRUE(ps.ok()) << cfg.dump() << ": " << ps.why();
    TempDir dir;
    expect_reload_is_bit_exact(model, dir.file("d"), cfg.dump());
  }
}

TEST(T5, CrossAttentionAdaptersSitInDecoderBlocksOnly) {
  PeftModel model(models::load_pretrained(fixture("hf/models/t5")));
  torch::NoGradGuard g;
  model.eval();
  const at::Tensor base = model.forward(t5_inputs()).logits;
  model.add_adapter("default", *methods::parse_config({{"peft_type", "BOTTLENECK_ADAPTER"}, {"task_type", "SEQ_2_SEQ_LM"},
                                                       {"preset", "houlsby"}, {"bottleneck_size", 4},
                                                       {"cross_adapter", true}}));
  // Two slots in each of 4 blocks, a third in the 2 decoder blocks: 10 adapters of 2·32·4 + 4 + 32.
  int64_t adapters = 0;
  for (const auto& item : model.base_model().named_parameters())
    if (item.value().requires_grad() && item.key().find(".adapters.") != std::string::npos) adapters += item.value().numel();
  EXPECT_EQ(adapters, 10 * (2 * 32 * 4 + 4 + 32));
  EXPECT_LT(max_abs_diff(model.forward(t5_inputs()).logits, base), 1e-6);  // zero_up: the identity at init
  TempDir dir;
  for (auto& p : model.trainable_parameters()) p.normal_(0.0, 0.1);
  expect_reload_is_bit_exact(model, dir.file("d"), "cross_adapter");
  EXPECT_EQ(core::read_json_file(dir.file("d/adapter_config.json"))["cross_adapter"], true);
  PeftModel plain(models::load_pretrained(fixture("hf/models/gpt2")));
  const auto e = error_of([&] {
    plain.add_adapter("default", *methods::parse_config({{"peft_type", "BOTTLENECK_ADAPTER"}, {"cross_adapter", true}}));
  });
  EXPECT_NE(e.find("cross_adapter"), std::string::npos) << e;
}

TEST(T5, PromptMethodsTrainOnBothSubmoduleLayouts) {
  for (nlohmann::json cfg : std::vector<nlohmann::json>{
           {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}},
           {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}, {"num_transformer_submodules", 1}},
           {{"peft_type", "P_TUNING"}, {"num_virtual_tokens", 3}, {"encoder_hidden_size", 16}},
           {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 3}},
           {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 3}, {"num_transformer_submodules", 1}},
           {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 3}, {"prefix_projection", true},
            {"encoder_hidden_size", 16}}}) {
    cfg["task_type"] = "SEQ_2_SEQ_LM";
    PeftModel model(models::load_pretrained(fixture("hf/models/t5")));
    model.add_adapter("default", *methods::parse_config(cfg));
    const auto [first, last] = train_on_fixture(model, 5);
    EXPECT_LT(last, first) << cfg.dump();
    TempDir dir;
    expect_reload_is_bit_exact(model, dir.file("d"), cfg.dump());
    const auto saved = core::read_json_file(dir.file("d/adapter_config.json"));
    EXPECT_EQ(saved["num_transformer_submodules"], cfg.value("num_transformer_submodules", 2)) << cfg.dump();
  }
  // Two submodules on a decoder-only model are refused by name.
  PeftModel gpt2(models::load_pretrained(fixture("hf/models/gpt2")));
  const auto e = error_of([&] {
    gpt2.add_adapter("default", *methods::parse_config({{"peft_type", "PROMPT_TUNING"}, {"task_type", "CAUSAL_LM"},
                                                        {"num_virtual_tokens", 2}, {"num_transformer_submodules", 2}}));
  });
  EXPECT_NE(e.find("num_transformer_submodules"), std::string::npos) << e;
}

struct T5Adapter {
  std::string name;
  friend void PrintTo(const T5Adapter& a, std::ostream* os) { *os << a.name; }
};

class T5Adapters : public ::testing::TestWithParam<T5Adapter> {
 protected:
  std::string dir() const { return "hf/adapters/" + GetParam().name; }
  std::unique_ptr<PeftModel> load() const {
    auto model = std::make_unique<PeftModel>(models::load_pretrained(fixture("hf/models/t5")));
    checkpoint::load_adapter(*model, fixture(dir() + "/adapter"));
    model->eval();
    return model;
  }
};

TEST_P(T5Adapters, OutputsAndMergedOutputsMatchPeft) {
  auto model = load();
  torch::NoGradGuard g;
  const double diff = max_output_diff(model->forward(t5_inputs()), dir() + "/outputs.safetensors");
  RecordProperty("max_abs_diff", fmt::format("{:.3e}", diff));
  EXPECT_LT(diff, 1e-5);
  if (std::filesystem::exists(fixture(dir() + "/merged_outputs.safetensors"))) {  // LoRA and IA3 merge
    model->merge_adapter();
    const double merged = max_output_diff(model->forward(t5_inputs()), dir() + "/merged_outputs.safetensors");
    RecordProperty("merged_max_abs_diff", fmt::format("{:.3e}", merged));
    EXPECT_LT(merged, 1e-5);
    model->unmerge_adapter();
  }
  model->disable_adapters();  // the delta's effect is far above the tolerance
  auto base = safetensors::load_file(fixture("hf/models/t5/outputs.safetensors"));
  auto theirs = safetensors::load_file(fixture(dir() + "/outputs.safetensors"));
  EXPECT_LT(max_abs_diff(model->forward(t5_inputs()).logits, base.at("logits")), 1e-5);
  EXPECT_GT(max_abs_diff(base.at("logits"), theirs.at("logits")), 1e-3);
}

TEST_P(T5Adapters, SavesPeftsKeysAndConfig) {
  auto model = load();
  TempDir out;
  checkpoint::save_adapter(*model, out.file("a"));
  safetensors::File ours(out.file("a/adapter_model.safetensors"));
  safetensors::File theirs(fixture(dir() + "/adapter/adapter_model.safetensors"));
  ASSERT_EQ(ours.tensors().size(), theirs.tensors().size());
  for (const auto& t : theirs.tensors()) {
    ASSERT_TRUE(ours.contains(t.name)) << t.name;
    EXPECT_TRUE(bit_equal(ours.load(t.name), theirs.load(t.name))) << t.name;
  }
  auto a = core::read_json_file(out.file("a/adapter_config.json"));
  EXPECT_EQ(a["task_type"], "SEQ_2_SEQ_LM");
  const auto hf = core::read_json_file(fixture(dir() + "/adapter/adapter_config.json"));
  EXPECT_EQ(a["peft_type"], hf["peft_type"]);
  for (const char* key : {"num_virtual_tokens", "num_transformer_submodules", "token_dim", "num_layers"})
    if (hf.contains(key)) EXPECT_EQ(a[key], hf[key]) << key;
}

INSTANTIATE_TEST_SUITE_P(HF, T5Adapters, ::testing::Values(T5Adapter{"t5_lora"}, T5Adapter{"t5_ia3"}, T5Adapter{"t5_prompt"},
                                           T5Adapter{"t5_prefix"}),
                         [](const auto& info) { return info.param.name; });

TEST(T5, DefaultTargetsAreHfPeftsForT5) {
  PeftModel lora(models::load_pretrained(fixture("hf/models/t5")));
  lora.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"task_type", "SEQ_2_SEQ_LM"}, {"r", 4}}));
  // q and v in 2 encoder self-attentions, 2 decoder self- and 2 cross-attentions: 6 × 2 × 4 × (32 + 32).
  EXPECT_EQ(element_count(lora.trainable_parameters()), 6 * 2 * 4 * 64);
  PeftModel ia3(models::load_pretrained(fixture("hf/models/t5")));
  ia3.add_adapter("default", *methods::parse_config({{"peft_type", "IA3"}, {"task_type", "SEQ_2_SEQ_LM"}}));
  // k and v (32 outputs each) in 6 attentions, wo's 64 inputs in 4 feed-forwards.
  EXPECT_EQ(element_count(ia3.trainable_parameters()), 6 * 2 * 32 + 4 * 64);
}

}  // namespace
}  // namespace peft::test
