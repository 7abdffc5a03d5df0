// Every backbone family against Hugging Face transformers 4.36.2 (fixtures/hf/models): outputs,
// parameter names and shapes, and the loader's handling of heads, prefixes and dtypes.
#include <torch/torch.h>

#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"
#include "peft/models/load.h"
#include "test_util.h"

namespace peft::test {
namespace {

struct Family {
  std::string dir;           // under tests/fixtures/hf/models
  std::string architecture;  // what config.json names and we must build
  size_t hidden_states;
  friend void PrintTo(const Family& f, std::ostream* os) { *os << f.dir; }
};

const std::vector<Family> kFamilies = {
    {"gpt2", "GPT2LMHeadModel", 3},
    {"bert", "BertForSequenceClassification", 3},
    {"llama", "LlamaForCausalLM", 3},
    {"llama_mha", "LlamaForCausalLM", 3},
    {"vit", "ViTForImageClassification", 3},
};

class BackboneParity : public ::testing::TestWithParam<Family> {
 protected:
  std::string dir() const { return "hf/models/" + GetParam().dir; }
};

TEST_P(BackboneParity, LogitsPoolerAndEveryHiddenStateMatchHF) {
  auto model = models::load_pretrained(fixture(dir()));
  EXPECT_EQ(model->architecture(), GetParam().architecture);
  model->eval();
  torch::NoGradGuard no_grad;
  auto out = model->forward(fixture_inputs(dir() + "/inputs.safetensors"));
  ASSERT_EQ(out.hidden_states.size(), GetParam().hidden_states);
  ASSERT_TRUE(out.logits.defined());
  const double diff = max_output_diff(out, dir() + "/outputs.safetensors");
  RecordProperty("max_abs_diff", fmt::format("{:.3e}", diff));
  EXPECT_LT(diff, 1e-5);
}

TEST_P(BackboneParity, ParametersAreExactlyTheCheckpointsByHFName) {
  auto model = models::load_pretrained(fixture(dir()));
  safetensors::File file(fixture(dir() + "/model.safetensors"));
  auto params = model->named_parameters();
  // Tied weights (GPT-2's lm_head) are one parameter, stored once, as HF does.
  EXPECT_EQ(params.size(), file.tensors().size());
  for (const auto& t : file.tensors()) {
    ASSERT_TRUE(params.contains(t.name)) << t.name;
    EXPECT_EQ(params[t.name].sizes().vec(), t.shape) << t.name;
    EXPECT_TRUE(bit_equal(params[t.name], file.load(t.name))) << t.name;
  }
  for (const auto& p : params) EXPECT_FALSE(p.value().requires_grad()) << p.key();
}

TEST_P(BackboneParity, Bfloat16OnRequestStaysClose) {
  models::LoadOptions opts;
  opts.dtype = torch::kBFloat16;
  auto model = models::load_pretrained(fixture(dir()), opts);
  for (const auto& p : model->parameters()) ASSERT_EQ(p.scalar_type(), torch::kBFloat16);
  model->eval();
  torch::NoGradGuard no_grad;
  auto inputs = fixture_inputs(dir() + "/inputs.safetensors", false);
  auto out = model->forward(inputs);
  auto ref = safetensors::load_file(fixture(dir() + "/outputs.safetensors"));
  EXPECT_EQ(out.logits.scalar_type(), torch::kBFloat16);
  const double scale = ref.at("logits").abs().max().item<double>();
  EXPECT_LT(max_abs_diff(out.logits, ref.at("logits")), 0.05 * scale + 0.02);
}

INSTANTIATE_TEST_SUITE_P(HF, BackboneParity, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) { return info.param.dir; });

TEST(BackboneLoad, Float16FileLoadsInItsDtypeOrConverted) {
  TempDir tmp;
  std::filesystem::copy_file(fixture("hf/models/llama/config.json"), tmp.file("config.json"));
  auto weights = safetensors::load_file(fixture("hf/models/llama/model.safetensors"));
  for (auto& [k, t] : weights) t = t.to(torch::kHalf);
  safetensors::save_file(tmp.file("model.safetensors"), weights);
  auto half = models::load_pretrained(tmp.path());
  EXPECT_EQ(half->named_parameters()["model.norm.weight"].scalar_type(), torch::kHalf);
  models::LoadOptions opts;
  opts.dtype = torch::kFloat;
  auto f32 = models::load_pretrained(tmp.path(), opts);
  auto p = f32->named_parameters();
  for (auto& [k, t] : weights) EXPECT_TRUE(bit_equal(p[k], t.to(torch::kFloat))) << k;
}

TEST(BackboneLoad, BertPaddedRowMatchesAndIgnoresPadding) {
  // The fixture's second row has 4 padding positions; changing the padded ids changes nothing
  // on the real tokens.
  auto model = models::load_pretrained(fixture("hf/models/bert"));
  model->eval();
  torch::NoGradGuard no_grad;
  auto inputs = fixture_inputs("hf/models/bert/inputs.safetensors");
  ASSERT_EQ(inputs.attention_mask[1].sum().item<int64_t>(), 8);
  auto a = model->forward(inputs);
  inputs.input_ids = inputs.input_ids.clone();
  inputs.input_ids.index_put_({1, torch::indexing::Slice(8, 12)}, 77);
  auto b = model->forward(inputs);
  EXPECT_LT(max_abs_diff(a.last_hidden_state[1].slice(0, 0, 8), b.last_hidden_state[1].slice(0, 0, 8)), 1e-6);
  EXPECT_LT(max_abs_diff(a.logits, b.logits), 1e-6);
}

TEST(BackboneLoad, TaskCheckpointLoadsAsBareBackboneDroppingItsHead) {
  models::LoadOptions opts;
  opts.task = "feature_extraction";
  auto bare = models::load_pretrained(fixture("hf/models/bert"), opts);
  EXPECT_EQ(bare->architecture(), "BertModel");
  auto params = bare->named_parameters();
  EXPECT_TRUE(params.contains("embeddings.word_embeddings.weight"));
  EXPECT_FALSE(params.contains("classifier.weight"));
  bare->eval();
  torch::NoGradGuard no_grad;
  auto out = bare->forward(fixture_inputs("hf/models/bert/inputs.safetensors"));
  EXPECT_FALSE(out.logits.defined());
  EXPECT_LT(max_output_diff(out, "hf/models/bert/outputs.safetensors"), 1e-5);

  // And back: the bare backbone's file (no "bert." prefix) under a classification head.
  TempDir tmp;
  nlohmann::json cfg = core::read_json_file(fixture("hf/models/bert/config.json"));
  cfg["architectures"] = {"BertModel"};
  core::write_json_file(tmp.file("config.json"), cfg);
  safetensors::TensorMap bare_weights;
  for (auto& item : bare->named_parameters()) bare_weights[item.key()] = item.value();
  safetensors::save_file(tmp.file("model.safetensors"), bare_weights);
  models::LoadOptions cls;
  cls.task = "SEQ_CLS";
  cls.num_labels = 5;
  auto head = models::load_pretrained(tmp.path(), cls);
  EXPECT_EQ(head->architecture(), "BertForSequenceClassification");
  EXPECT_EQ(head->named_parameters()["classifier.weight"].sizes(), (c10::IntArrayRef{5, 64}));
  EXPECT_TRUE(bit_equal(head->named_parameters()["bert.pooler.dense.weight"], bare_weights.at("pooler.dense.weight")));
}

TEST(BackboneLoad, DecoderGetsANewClassificationHeadOnTheLastRealToken) {
  for (const std::string family : {"gpt2", "llama"}) {
    models::LoadOptions opts;
    opts.task = "sequence_classification";
    opts.num_labels = 3;
    auto model = models::load_pretrained(fixture("hf/models/" + family), opts);
    ASSERT_EQ(model->head_modules(), std::vector<std::string>{"score"});
    auto params = model->named_parameters();
    ASSERT_TRUE(params.contains("score.weight"));
    EXPECT_FALSE(params.contains("lm_head.weight")) << "the causal-LM head is dropped";
    model->eval();
    torch::NoGradGuard no_grad;
    // Row 1 ends with pads (pad_token_id 0 here): its logits come from its last real token.
    auto cfg = core::read_json_file(fixture("hf/models/" + family + "/config.json"));
    cfg["pad_token_id"] = 0;
    cfg["num_labels"] = 3;
    auto with_pad = models::create_model(cfg, "sequence_classification");
    for (auto& item : with_pad->named_parameters()) item.value().set_data(params[item.key()].detach().clone());
    with_pad->eval();
    models::ModelInputs in;
    in.input_ids = torch::tensor({{5, 6, 7, 8, 9}, {5, 6, 7, 0, 0}}, torch::kLong);
    in.attention_mask = torch::tensor({{1, 1, 1, 1, 1}, {1, 1, 1, 0, 0}}, torch::kLong);
    auto out = with_pad->forward(in);
    ASSERT_EQ(out.logits.sizes(), (c10::IntArrayRef{2, 3}));
    models::ModelInputs row;
    row.input_ids = in.input_ids.slice(0, 1, 2).slice(1, 0, 3);
    auto alone = with_pad->forward(row);
    EXPECT_LT(max_abs_diff(out.logits[1], alone.logits[0]), 1e-5) << family;
    in.labels = torch::tensor({0, 2}, torch::kLong);
    EXPECT_TRUE(std::isfinite(with_pad->forward(in).loss.item<double>()));
  }
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning " << needles.front();
  } catch (const Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(BackboneLoad, BadConfigsTasksAndTensorsAreNamed) {
  expect_error([] { models::create_model({{"model_type", "bart"}}); }, {"bart", "bert", "llama", "vit", "t5"});
  expect_error([] { models::create_model({{"model_type", "vit"}}, "causal_lm"); }, {"causal_lm", "ViTModel"});
  expect_error([] { models::create_model({{"model_type", "llama"}}, "translation"); }, {"translation", "SEQ_CLS"});
  expect_error([] { models::create_model({{"model_type", "llama"}, {"num_attention_heads", 32}, {"num_key_value_heads", 5}}); },
               {"num_key_value_heads", "5"});
  expect_error([] { models::create_model({{"model_type", "bert"}, {"position_embedding_type", "relative_key"}}); },
               {"position_embedding_type", "relative_key"});
  expect_error([] { models::create_model({{"model_type", "vit"}, {"image_size", 30}, {"patch_size", 8}}); },
               {"image_size", "patch_size"});
  expect_error([] { models::create_model({{"model_type", "llama"}, {"rope_scaling", {{"type", "yarn"}, {"factor", 2}}}}); },
               {"rope_scaling", "yarn"});

  // Mis-shaped and extra tensors in a real checkpoint.
  TempDir tmp;
  std::filesystem::copy_file(fixture("hf/models/vit/config.json"), tmp.file("config.json"));
  auto weights = safetensors::load_file(fixture("hf/models/vit/model.safetensors"));
  auto bad = weights;
  bad["vit.embeddings.position_embeddings"] = torch::zeros({1, 10, 64});
  safetensors::save_file(tmp.file("model.safetensors"), bad);
  expect_error([&] { models::load_pretrained(tmp.path()); }, {"vit.embeddings.position_embeddings", "[1, 10, 64]", "[1, 17, 64]"});
  auto extra = weights;
  extra["vit.encoder.layer.0.surprise"] = torch::zeros({3});
  safetensors::save_file(tmp.file("model.safetensors"), extra);
  expect_error([&] { models::load_pretrained(tmp.path()); }, {"vit.encoder.layer.0.surprise"});
  models::LoadOptions allow;
  allow.allow_extra_tensors = true;
  EXPECT_NO_THROW(models::load_pretrained(tmp.path(), allow));
  auto missing = weights;
  missing.erase("vit.encoder.layer.1.attention.attention.value.bias");
  safetensors::save_file(tmp.file("model.safetensors"), missing);
  expect_error([&] { models::load_pretrained(tmp.path()); }, {"vit.encoder.layer.1.attention.attention.value.bias", "[64]"});

  auto vit = models::load_pretrained(fixture("hf/models/vit"));
  models::ModelInputs wrong;
  wrong.pixel_values = torch::zeros({1, 3, 24, 24});
  expect_error([&] { vit->forward(wrong); }, {"pixel_values", "[batch, 3, 32, 32]"});
}

}  // namespace
}  // namespace peft::test
