// GPT-2 backbone parity with Hugging Face transformers (fixtures/hf/models/gpt2).
#include <torch/torch.h>

#include "peft/core/safetensors.h"
#include "peft/models/gpt2.h"
#include "peft/models/load.h"
#include "test_util.h"

namespace peft::test {
namespace {

models::ModelInputs fixture_inputs(const std::string& dir) {
  auto in = safetensors::load_file(fixture(dir + "/inputs.safetensors"));
  models::ModelInputs inputs;
  inputs.input_ids = in.at("input_ids");
  inputs.attention_mask = in.at("attention_mask");
  inputs.output_hidden_states = true;
  return inputs;
}

TEST(GPT2Parity, LogitsAndEveryHiddenStateMatchHF) {
  auto model = models::load_pretrained(fixture("hf/models/gpt2"));
  model->eval();
  torch::NoGradGuard no_grad;
  auto out = model->forward(fixture_inputs("hf/models/gpt2"));
  auto ref = safetensors::load_file(fixture("hf/models/gpt2/outputs.safetensors"));
  EXPECT_LT(max_abs_diff(out.logits, ref.at("logits")), 1e-5);
  EXPECT_LT(max_abs_diff(out.last_hidden_state, ref.at("last_hidden_state")), 1e-5);
  ASSERT_EQ(out.hidden_states.size(), 3u);
  for (size_t i = 0; i < out.hidden_states.size(); ++i)
    EXPECT_LT(max_abs_diff(out.hidden_states[i], ref.at("hidden_states." + std::to_string(i))), 1e-5) << i;
}

TEST(GPT2Parity, ParameterNamesAreHFs) {
  auto model = models::load_pretrained(fixture("hf/models/gpt2"));
  safetensors::File file(fixture("hf/models/gpt2/model.safetensors"));
  auto params = model->named_parameters();
  ASSERT_EQ(params.size(), file.tensors().size());
  for (const auto& t : file.tensors()) {
    ASSERT_TRUE(params.contains(t.name)) << t.name;
    EXPECT_EQ(params[t.name].sizes().vec(), t.shape) << t.name;
  }
  // Conv1D layout [in, out].
  EXPECT_EQ(params["transformer.h.0.attn.c_attn.weight"].sizes().vec(), (std::vector<int64_t>{64, 192}));
  for (const auto& p : params) EXPECT_FALSE(p.value().requires_grad()) << p.key();
}

TEST(GPT2Parity, PaddingDoesNotChangeRealPositions) {
  // Right padding: the real tokens of a padded row compute exactly what the unpadded row does.
  auto model = models::load_pretrained(fixture("hf/models/gpt2"));
  model->eval();
  torch::NoGradGuard no_grad;
  auto inputs = fixture_inputs("hf/models/gpt2");
  models::ModelInputs short_in;
  short_in.input_ids = inputs.input_ids.slice(0, 0, 1).slice(1, 0, 10);
  short_in.attention_mask = torch::ones_like(short_in.input_ids);
  models::ModelInputs padded = short_in;
  padded.input_ids = torch::cat({short_in.input_ids, torch::zeros({1, 6}, torch::kLong)}, 1);
  padded.attention_mask = torch::cat({short_in.attention_mask, torch::zeros({1, 6}, torch::kLong)}, 1);
  auto a = model->forward(short_in).logits;
  auto b = model->forward(padded).logits.slice(1, 0, 10);
  EXPECT_LT(max_abs_diff(a, b), 1e-5);
  EXPECT_FALSE(model->forward(padded).logits.isnan().any().item<bool>());
}

TEST(GPT2Load, MissingAndMisShapedTensorsAreNamed) {
  TempDir dir;
  std::filesystem::copy_file(fixture("hf/models/gpt2/config.json"), dir.file("config.json"));
  auto weights = safetensors::load_file(fixture("hf/models/gpt2/model.safetensors"));
  auto without = weights;
  without.erase("transformer.h.1.mlp.c_fc.weight");
  safetensors::save_file(dir.file("model.safetensors"), without);
  try {
    models::load_pretrained(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("transformer.h.1.mlp.c_fc.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[64, 256]"), std::string::npos) << e.what();
  }
  auto bad = weights;
  bad["transformer.wpe.weight"] = torch::zeros({64, 64});
  safetensors::save_file(dir.file("model.safetensors"), bad);
  EXPECT_THROW(models::load_pretrained(dir.path()), Error);
  auto extra = weights;
  extra["transformer.h.0.surprise"] = torch::zeros({3});
  safetensors::save_file(dir.file("model.safetensors"), extra);
  EXPECT_THROW(models::load_pretrained(dir.path()), Error);
  models::LoadOptions allow;
  allow.allow_extra_tensors = true;
  EXPECT_NO_THROW(models::load_pretrained(dir.path(), allow));
}

TEST(GPT2Load, ShardedIndexAndBareBackboneNames) {
  // A sharded checkpoint whose keys lack the "transformer." prefix, as the original gpt2 files do.
  TempDir dir;
  std::filesystem::copy_file(fixture("hf/models/gpt2/config.json"), dir.file("config.json"));
  auto weights = safetensors::load_file(fixture("hf/models/gpt2/model.safetensors"));
  safetensors::TensorMap shard1, shard2;
  nlohmann::json index;
  int i = 0;
  for (auto& [name, t] : weights) {
    std::string bare = name.substr(std::string("transformer.").size());
    auto& shard = (i++ % 2 == 0) ? shard1 : shard2;
    shard[bare] = t;
    index["weight_map"][bare] = (&shard == &shard1) ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  shard1["h.0.attn.bias"] = torch::ones({1, 1, 128, 128});  // legacy causal-mask buffer, ignored
  index["weight_map"]["h.0.attn.bias"] = "model-00001-of-00002.safetensors";
  safetensors::save_file(dir.file("model-00001-of-00002.safetensors"), shard1);
  safetensors::save_file(dir.file("model-00002-of-00002.safetensors"), shard2);
  std::ofstream(dir.file("model.safetensors.index.json")) << index.dump();
  auto model = models::load_pretrained(dir.path());
  auto ref = models::load_pretrained(fixture("hf/models/gpt2"));
  for (const auto& p : ref->named_parameters())
    EXPECT_TRUE(at::equal(p.value(), model->named_parameters()[p.key()])) << p.key();
}

TEST(GPT2Load, UnknownModelTypeListsSupported) {
  try {
    models::create_model({{"model_type", "mamba"}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mamba"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("gpt2"), std::string::npos);
  }
}

TEST(GPT2Load, Bfloat16OnRequest) {
  models::LoadOptions opts;
  opts.dtype = torch::kBFloat16;
  auto model = models::load_pretrained(fixture("hf/models/gpt2"), opts);
  model->eval();
  torch::NoGradGuard no_grad;
  auto out = model->forward(fixture_inputs("hf/models/gpt2"));
  EXPECT_EQ(out.logits.scalar_type(), torch::kBFloat16);
  auto ref = safetensors::load_file(fixture("hf/models/gpt2/outputs.safetensors"));
  EXPECT_LT(max_abs_diff(out.logits, ref.at("logits")), 0.05);
}

}  // namespace
}  // namespace peft::test
