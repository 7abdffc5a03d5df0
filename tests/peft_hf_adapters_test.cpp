// HF PEFT adapter files on every family (fixtures/hf/adapters: LoRA on BERT and LLaMA, IA³ on
// GPT-2 and LLaMA, prefix / projected prefix / prompt tuning on GPT-2, adaption prompt on LLaMA):
// outputs unmerged and merged, the merged weight, saving back in PEFT's layout.
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace peft::test {
namespace {

struct AdapterFixture {
  std::string adapter;  // under hf/adapters
  std::string base;     // under hf/models
  std::string merged_module;  ///< "" for methods that cannot be merged
  friend void PrintTo(const AdapterFixture& f, std::ostream* os) { *os << f.adapter; }
};

class HFAdapters : public ::testing::TestWithParam<AdapterFixture> {
 protected:
  std::string adapter_dir() const { return "hf/adapters/" + GetParam().adapter; }
  models::ModelInputs inputs() const { return fixture_inputs("hf/models/" + GetParam().base + "/inputs.safetensors"); }
  std::unique_ptr<PeftModel> load() const {
    auto model = std::make_unique<PeftModel>(models::load_pretrained(fixture("hf/models/" + GetParam().base)));
    checkpoint::load_adapter(*model, fixture(adapter_dir() + "/adapter"));
    model->eval();
    return model;
  }
};

TEST_P(HFAdapters, OutputsMatchPeft) {
  auto model = load();
  torch::NoGradGuard g;
  const double diff = max_output_diff(model->forward(inputs()), adapter_dir() + "/outputs.safetensors");
  RecordProperty("max_abs_diff", fmt::format("{:.3e}", diff));
  EXPECT_LT(diff, 1e-5);
  model->disable_adapters();  // the fixture's effect is far larger than the tolerance
  auto base = model->forward(inputs());
  auto ref = safetensors::load_file(fixture(adapter_dir() + "/outputs.safetensors"));
  // Prompt tuning adds positions: compare the real tokens' (the last ones).
  at::Tensor theirs = ref.at("logits").narrow(1, ref.at("logits").size(1) - base.logits.size(1), base.logits.size(1));
  EXPECT_GT(max_abs_diff(base.logits, theirs), 1e-3);
}

TEST_P(HFAdapters, MergedLayerAndOutputsMatchPeftOrMergingIsRefused) {
  auto model = load();
  if (GetParam().merged_module.empty()) {  // prompts and adaption prompts: nothing can absorb them
    try {
      model->merge_adapter();
      FAIL() << "merging should be refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cannot be merged"), std::string::npos) << e.what();
    }
    return;
  }
  torch::NoGradGuard g;
  auto layer = safetensors::load_file(fixture(adapter_dir() + "/merged_layer.safetensors"));
  auto params = model->base_model().named_parameters();
  const std::string w = GetParam().merged_module + ".weight";
  EXPECT_TRUE(bit_equal(params[w], layer.at("base." + w)));
  model->merge_adapter();
  EXPECT_LT(max_abs_diff(params[w], layer.at("merged." + w)), 1e-7);
  const std::string b = GetParam().merged_module + ".bias";
  if (layer.count("merged." + b)) EXPECT_TRUE(bit_equal(params[b], layer.at("merged." + b)));
  const double diff = max_output_diff(model->forward(inputs()), adapter_dir() + "/merged_outputs.safetensors");
  RecordProperty("merged_max_abs_diff", fmt::format("{:.3e}", diff));
  EXPECT_LT(diff, 1e-5);
  model->unmerge_adapter();
  EXPECT_LT(max_output_diff(model->forward(inputs()), adapter_dir() + "/outputs.safetensors"), 1e-5);
  auto plain = model->merge_and_unload();
  EXPECT_LT(max_output_diff(plain->forward(inputs()), adapter_dir() + "/merged_outputs.safetensors"), 1e-5);
}

TEST_P(HFAdapters, SavesPeftsExactFiles) {
  auto model = load();
  TempDir dir;
  checkpoint::save_adapter(*model, dir.file("out"));
  safetensors::File ours(dir.file("out/adapter_model.safetensors"));
  safetensors::File theirs(fixture(adapter_dir() + "/adapter/adapter_model.safetensors"));
  ASSERT_EQ(ours.tensors().size(), theirs.tensors().size());
  for (const auto& t : theirs.tensors()) {
    ASSERT_TRUE(ours.contains(t.name)) << t.name;
    EXPECT_TRUE(bit_equal(ours.load(t.name), theirs.load(t.name))) << t.name;
  }
  auto a = core::read_json_file(dir.file("out/adapter_config.json"));
  auto b = core::read_json_file(fixture(adapter_dir() + "/adapter/adapter_config.json"));
  for (auto it = b.begin(); it != b.end(); ++it) {
    ASSERT_TRUE(a.contains(it.key())) << it.key();
    if (it.value().is_array() && (it.key() == "target_modules" || it.key() == "feedforward_modules")) {  // sets in HF PEFT
      auto x = a[it.key()].get<std::vector<std::string>>(), y = it.value().get<std::vector<std::string>>();
      std::sort(x.begin(), x.end());
      std::sort(y.begin(), y.end());
      EXPECT_EQ(x, y) << it.key();
    } else {
      EXPECT_EQ(a[it.key()], it.value()) << it.key();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(HF, HFAdapters,
                         ::testing::Values(AdapterFixture{"bert_lora", "bert", "bert.encoder.layer.0.attention.self.query"},
                                           AdapterFixture{"llama_lora", "llama", "model.layers.0.self_attn.v_proj"},
                                           AdapterFixture{"gpt2_ia3", "gpt2", "transformer.h.0.mlp.c_proj"},
                                           AdapterFixture{"llama_ia3", "llama", "model.layers.0.mlp.down_proj"},
                                           AdapterFixture{"gpt2_prefix", "gpt2", ""},
                                           AdapterFixture{"gpt2_prefix_proj", "gpt2", ""},
                                           AdapterFixture{"gpt2_prompt", "gpt2", ""},
                                           AdapterFixture{"llama_adaption_prompt", "llama_mha", ""}),
                         [](const auto& info) { return info.param.adapter; });

TEST(HFAdapters, SeqClsTrainsAndSavesTheHeadAsPeftDoes) {
  // task_type SEQ_CLS with modules_to_save null: the classifier is still trained and saved.
  auto model = std::make_unique<PeftModel>(models::load_pretrained(fixture("hf/models/bert")));
  auto cfg = methods::parse_config(core::read_json_file(fixture("hf/adapters/bert_lora/adapter/adapter_config.json")));
  model->add_adapter("default", *cfg);
  auto state = model->adapter_state_dict("default");
  EXPECT_TRUE(state.count("base_model.model.classifier.weight"));
  EXPECT_TRUE(state.count("base_model.model.classifier.bias"));
  int64_t n = 0;
  for (auto& p : model->trainable_parameters()) n += p.numel();
  // 2 layers x (query + value) x r(64 + 64) + classifier 2x64 + 2.
  EXPECT_EQ(n, 2 * 2 * 4 * (64 + 64) + 2 * 64 + 2);
}

TEST(HFAdapters, IA3CountsOneScalePerScaledFeature) {
  // GPT-2 defaults: c_attn scales its 192 outputs, mlp.c_proj (feed-forward) its 256 inputs.
  PeftModel model(models::load_pretrained(fixture("hf/models/gpt2")));
  model.add_adapter("default", *methods::parse_config({{"peft_type", "IA3"}}));
  EXPECT_EQ(element_count(model.trainable_parameters()), 2 * (192 + 256));
}

TEST(HFAdapters, IA3ExcludeModulesLeavesTargetedLayersAlone) {
  // HF PEFT's exclude_modules (a list: full names or suffixes; a string: a full-match regex).
  for (const nlohmann::json exclude : {nlohmann::json({"h.0.attn.c_attn"}), nlohmann::json(".*h\\.0\\.attn\\.c_attn")}) {
    PeftModel model(models::load_pretrained(fixture("hf/models/gpt2")));
    auto cfg = methods::parse_config({{"peft_type", "IA3"}, {"exclude_modules", exclude}});
    model.add_adapter("default", *cfg);
    auto state = model.adapter_state_dict("default");
    EXPECT_FALSE(state.count("base_model.model.transformer.h.0.attn.c_attn.ia3_l")) << exclude.dump();
    EXPECT_TRUE(state.count("base_model.model.transformer.h.1.attn.c_attn.ia3_l")) << exclude.dump();
    EXPECT_EQ(element_count(model.trainable_parameters()), 2 * (192 + 256) - 192) << exclude.dump();
    EXPECT_EQ(cfg->to_json()["exclude_modules"], exclude);
  }
  // Unset, the key is not written (older HF PEFT refuses unknown keys).
  EXPECT_FALSE(methods::parse_config({{"peft_type", "IA3"}})->to_json().contains("exclude_modules"));
}

TEST(HFAdapters, IA3FeedForwardModulesComeFromTheModelsTableEvenWithExplicitTargets) {
  // HF PEFT fills feedforward_modules from its per-model table whenever it is unset, whatever
  // target_modules says: mlp.c_proj still scales its 256 inputs ([1, in]), c_attn its outputs.
  PeftModel model(models::load_pretrained(fixture("hf/models/gpt2")));
  model.add_adapter("default", *methods::parse_config({{"peft_type", "IA3"}, {"target_modules", {"c_attn", "mlp.c_proj"}}}));
  auto state = model.adapter_state_dict("default");
  EXPECT_EQ(state.at("base_model.model.transformer.h.0.mlp.c_proj.ia3_l").sizes(), (std::vector<int64_t>{1, 256}));
  EXPECT_EQ(state.at("base_model.model.transformer.h.0.attn.c_attn.ia3_l").sizes(), (std::vector<int64_t>{192, 1}));
  // Explicit feed-forward modules still win.
  PeftModel other(models::load_pretrained(fixture("hf/models/gpt2")));
  other.add_adapter("default", *methods::parse_config({{"peft_type", "IA3"}, {"target_modules", {"c_attn", "mlp.c_proj"}},
                                                       {"feedforward_modules", {"c_attn"}}}));
  auto explicit_ff = other.adapter_state_dict("default");
  EXPECT_EQ(explicit_ff.at("base_model.model.transformer.h.0.mlp.c_proj.ia3_l").sizes(), (std::vector<int64_t>{64, 1}));
  EXPECT_EQ(explicit_ff.at("base_model.model.transformer.h.0.attn.c_attn.ia3_l").sizes(), (std::vector<int64_t>{1, 64}));
}

}  // namespace
}  // namespace peft::test
