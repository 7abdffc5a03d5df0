// PeftModel and LoraConfig behaviour: target selection, errors, adapter management, reports.
#include <fstream>

#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/methods/lora.h"
#include "peft/methods/target_modules.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace peft::test {
namespace {

using methods::LoraConfig;

std::unique_ptr<PeftModel> gpt2() {
  auto m = std::make_unique<PeftModel>(models::load_pretrained(fixture("hf/models/gpt2")));
  m->eval();
  return m;
}

models::ModelInputs ids() {
  models::ModelInputs in;
  in.input_ids = torch::arange(3, 19, torch::kLong).view({2, 8});
  return in;
}

std::vector<std::string> adapted(PeftModel& m, const std::string& adapter) {
  std::vector<std::string> out;
  for (auto& [name, lin] : m.linears())
    if (lin->delta(adapter)) out.push_back(name);
  return out;
}

LoraConfig lora(std::vector<std::string> targets) {
  LoraConfig c;
  c.r = 2;
  c.target_modules.names = std::move(targets);
  c.init_lora_weights = "false";  // non-zero deltas, so switching adapters changes outputs
  return c;
}

TEST(TargetModules, FollowHFRules) {
  methods::TargetModules list;
  list.names = {"c_proj", "h.1.attn.c_attn"};
  methods::LayerSelection all;
  EXPECT_TRUE(methods::matches_target("transformer.h.0.mlp.c_proj", list, all));
  EXPECT_TRUE(methods::matches_target("transformer.h.1.attn.c_attn", list, all));
  EXPECT_FALSE(methods::matches_target("transformer.h.0.attn.c_attn", list, all));
  EXPECT_FALSE(methods::matches_target("transformer.h.0.mlp.xc_proj", list, all)) << "suffix means a whole segment";
  methods::TargetModules regex;
  regex.regex = ".*h\\.0\\..*c_attn";
  EXPECT_TRUE(methods::matches_target("transformer.h.0.attn.c_attn", regex, all));
  EXPECT_FALSE(methods::matches_target("transformer.h.10.attn.c_attn", regex, all)) << "regex must match in full";
  methods::LayerSelection layer1{{1}, {}};
  EXPECT_FALSE(methods::matches_target("transformer.h.0.mlp.c_proj", list, layer1));
  EXPECT_TRUE(methods::matches_target("transformer.h.1.mlp.c_proj", list, layer1));
  methods::LayerSelection pattern{{0}, {"h"}};
  EXPECT_TRUE(methods::matches_target("transformer.h.0.mlp.c_proj", list, pattern));
  // The layer is the first numbered segment (HF PEFT), not a nested index such as an expert's.
  methods::TargetModules experts;
  experts.names = {"down_proj"};
  EXPECT_TRUE(methods::matches_target("model.layers.1.mlp.experts.0.down_proj", experts, layer1));
  EXPECT_FALSE(methods::matches_target("model.layers.0.mlp.experts.1.down_proj", experts, layer1));
  methods::LayerSelection layers_pattern{{1}, {"layers"}};
  EXPECT_TRUE(methods::matches_target("model.layers.1.mlp.experts.0.down_proj", experts, layers_pattern));
  EXPECT_FALSE(methods::matches_target("model.layers.0.mlp.experts.1.down_proj", experts, layers_pattern));
  EXPECT_EQ(methods::pattern_key("transformer.h.0.attn.c_attn", {"mlp", "attn.c_attn"}), std::string("attn.c_attn"));
}

TEST(LoraConfig, PatternKeysAreTriedInTheFilesOrder) {
  // Both keys match transformer.h.1.mlp.c_fc; HF PEFT takes the first in the dict's (the file's)
  // order. Here the file lists the narrower key first, against sorted order.
  TempDir dir;
  {
    std::ofstream out(dir.file("adapter_config.json"));
    out << R"({"peft_type": "LORA", "r": 4, "target_modules": ["c_fc"],
               "rank_pattern": {"h.1.mlp.c_fc": 2, "c_fc": 6}, "alpha_pattern": {"h.1.mlp.c_fc": 1, "c_fc": 12}})";
  }
  auto from_file = std::dynamic_pointer_cast<methods::LoraConfig>(methods::parse_config_file(dir.file("adapter_config.json")));
  ASSERT_TRUE(from_file);
  EXPECT_EQ(from_file->rank_for("transformer.h.1.mlp.c_fc"), 2);
  EXPECT_EQ(from_file->rank_for("transformer.h.0.mlp.c_fc"), 6);
  EXPECT_DOUBLE_EQ(from_file->scaling_for("transformer.h.1.mlp.c_fc"), 1.0 / 2.0);
  EXPECT_DOUBLE_EQ(from_file->scaling_for("transformer.h.0.mlp.c_fc"), 12.0 / 6.0);
  // The same object built in code has no order but the sorted one ("c_fc" first).
  auto in_code = std::dynamic_pointer_cast<methods::LoraConfig>(methods::parse_config(
      {{"peft_type", "LORA"}, {"rank_pattern", {{"h.1.mlp.c_fc", 2}, {"c_fc", 6}}}}));
  EXPECT_EQ(in_code->rank_for("transformer.h.1.mlp.c_fc"), 6);
  // A delta saved and loaded keeps the shapes it was trained with.
  auto model = gpt2();
  model->add_adapter("default", *from_file);
  const std::string a = "base_model.model.transformer.h.1.mlp.c_fc.lora_A.weight";
  EXPECT_EQ(model->adapter_state_dict("default").at(a).size(0), 2);
  checkpoint::save_adapter(*model, dir.file("delta"));
  auto again = gpt2();
  checkpoint::load_adapter(*again, dir.file("delta"));
  EXPECT_EQ(again->adapter_state_dict("default").at(a).size(0), 2);
}

TEST(LoraConfig, RankAndAlphaPatternsAndLayers) {
  auto m = gpt2();
  auto c = lora({"c_attn", "c_fc"});
  c.rank_pattern = {{"c_fc", 6}};
  c.alpha_pattern = {{"c_fc", 3.0}};
  c.layers_to_transform = {1};
  m->add_adapter("default", c);
  EXPECT_EQ(adapted(*m, "default"), (std::vector<std::string>{"transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc"}));
  auto fc = std::dynamic_pointer_cast<methods::LoraDelta>(m->linears()[6].second->delta("default"));
  ASSERT_EQ(m->linears()[6].first, "transformer.h.1.mlp.c_fc");
  EXPECT_EQ(fc->lora_A->weight.size(0), 6);
  EXPECT_DOUBLE_EQ(fc->scaling(), 3.0 / 6.0);
}

TEST(LoraConfig, ValidationNamesTheField) {
  auto bad = [](auto mutate, const std::string& needle) {
    auto c = lora({"c_attn"});
    mutate(c);
    try {
      c.validate();
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  bad([](LoraConfig& c) { c.r = 0; }, "r must be");
  bad([](LoraConfig& c) { c.lora_dropout = 1.5; }, "lora_dropout");
  bad([](LoraConfig& c) { c.bias = "some"; }, "bias");
  bad([](LoraConfig& c) { c.init_lora_weights = "pissa"; }, "init_lora_weights");
  EXPECT_THROW(methods::parse_config({{"peft_type", "LORA"}, {"r", "eight"}}), Error);
  EXPECT_THROW(methods::parse_config({{"peft_type", "LORA"}, {"target_modules", "("}}), Error);
  EXPECT_THROW(methods::parse_config({{"peft_type", "NOPE"}}), Error);
}

TEST(PeftModel, NoMatchListsTheAvailableLayers) {
  auto m = gpt2();
  try {
    m->add_adapter("default", lora({"q_proj"}));
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("q_proj"), std::string::npos) << msg;
    EXPECT_NE(msg.find("attn.c_attn"), std::string::npos) << msg;
    EXPECT_NE(msg.find("mlp.c_fc"), std::string::npos) << msg;
  }
  EXPECT_FALSE(m->has_adapter("default")) << "a failed attach leaves nothing behind";
  for (auto& [name, lin] : m->linears()) EXPECT_TRUE(lin->adapters().empty()) << name;
}

TEST(PeftModel, AddSwitchDisableDelete) {
  auto m = gpt2();
  torch::NoGradGuard g;
  auto base = m->forward(ids()).logits.clone();
  m->add_adapter("a", lora({"c_attn"}));
  m->add_adapter("b", lora({"c_fc"}));
  EXPECT_EQ(m->active_adapter(), "a") << "adding does not switch";
  auto out_a = m->forward(ids()).logits.clone();
  m->set_adapter("b");
  auto out_b = m->forward(ids()).logits.clone();
  EXPECT_GT(max_abs_diff(out_a, base), 1e-4);
  EXPECT_GT(max_abs_diff(out_b, out_a), 1e-4);
  m->disable_adapters();
  EXPECT_TRUE(bit_equal(m->forward(ids()).logits, base));
  m->enable_adapters();
  EXPECT_TRUE(bit_equal(m->forward(ids()).logits, out_b));
  m->delete_adapter("b");
  EXPECT_EQ(m->active_adapter(), "a");
  EXPECT_TRUE(bit_equal(m->forward(ids()).logits, out_a));
  EXPECT_THROW(m->set_adapter("b"), Error);
  EXPECT_THROW(m->add_adapter("a", lora({"c_attn"})), Error);
  EXPECT_THROW(m->add_adapter("bad.name", lora({"c_attn"})), Error);
  m->merge_adapter();
  EXPECT_THROW(m->set_adapter("a"), Error) << "switching while merged is refused";
  EXPECT_THROW(m->delete_adapter("a"), Error);
  m->unmerge_adapter();
  auto plain = m->unload();
  EXPECT_LT(max_abs_diff(plain->forward(ids()).logits, base), 1e-6);
}

TEST(PeftModel, SeveralActiveAdaptersAddTheirDeltas) {
  auto m = gpt2();
  m->add_adapter("a", lora({"c_attn"}));
  m->add_adapter("b", lora({"c_attn", "c_fc"}));
  torch::NoGradGuard g;
  const auto out_a = m->forward(ids()).logits.clone();
  m->set_adapters({"a", "b"});
  EXPECT_EQ(m->active_adapter(), "a");
  EXPECT_EQ(m->active_adapters(), (std::vector<std::string>{"a", "b"}));
  const auto both = m->forward(ids()).logits.clone();
  EXPECT_GT(max_abs_diff(both, out_a), 1e-4);
  int64_t trainable = 0;
  for (auto& p : m->trainable_parameters()) trainable += p.numel();
  EXPECT_EQ(trainable, m->count_parameters().trainable);
  EXPECT_EQ(trainable, 2 * 2 * (64 + 192) + 2 * 2 * (64 + 192) + 2 * 2 * (64 + 256)) << "both adapters train";
  // W + ΔW_a + ΔW_b: merging both gives the same function, unmerging restores the weights.
  const auto before = m->base_model().named_parameters()["transformer.h.0.attn.c_attn.weight"].clone();
  m->merge_adapter();
  EXPECT_LT(max_abs_diff(m->forward(ids()).logits, both), 1e-5);
  m->unmerge_adapter();
  EXPECT_LT(max_abs_diff(m->base_model().named_parameters()["transformer.h.0.attn.c_attn.weight"], before), 1e-6);
  EXPECT_LT(max_abs_diff(m->forward(ids()).logits, both), 1e-5);
  m->delete_adapter("a");
  EXPECT_EQ(m->active_adapters(), (std::vector<std::string>{"b"}));
  // Refusals name what conflicts.
  EXPECT_NE(error_of([&] { m->set_adapters({"b", "b"}); }).find("listed twice"), std::string::npos);
  auto head = lora({"c_attn"});
  head.modules_to_save = {"ln_f"};
  m->add_adapter("c", head);
  m->add_adapter("d", head);
  const std::string copies = error_of([&] { m->set_adapters({"c", "d"}); });
  EXPECT_NE(copies.find("'transformer.ln_f."), std::string::npos) << copies;
  EXPECT_EQ(m->active_adapters(), (std::vector<std::string>{"b"})) << "a refused set changes nothing";
}

TEST(PeftModel, TrainableReportInHFFormat) {
  auto m = gpt2();
  m->add_adapter("default", lora({"c_attn"}));
  // 2 layers x r=2 x (64 + 192); the percentage printed as Python prints 100 * 1024 / 173312
  EXPECT_EQ(m->count_parameters().trainable, 2 * 2 * (64 + 192));
  EXPECT_EQ(m->trainable_parameters_report(),
            "trainable params: 1,024 || all params: 173,312 || trainable%: 0.5908");
}

TEST(PeftModel, ModulesToSaveAreOwnedPerAdapterAndRestored) {
  auto m = gpt2();
  auto c = lora({"c_attn"});
  c.modules_to_save = {"ln_f"};
  m->add_adapter("default", c);
  auto params = m->base_model().named_parameters();
  auto original = params["transformer.ln_f.weight"].detach().clone();
  {
    torch::NoGradGuard g;
    for (auto& p : m->trainable_parameters()) p.add_(0.5);
  }
  EXPECT_FALSE(bit_equal(params["transformer.ln_f.weight"], original));
  auto state = m->adapter_state_dict("default");
  EXPECT_TRUE(state.count("base_model.model.transformer.ln_f.weight"));
  EXPECT_TRUE(state.count("base_model.model.transformer.ln_f.bias"));
  m->disable_adapters();
  EXPECT_TRUE(bit_equal(params["transformer.ln_f.weight"], original)) << "the base's own values return";
  m->enable_adapters();
  TempDir dir;
  checkpoint::save_adapter(*m, dir.file("d"));
  auto fresh = gpt2();
  checkpoint::load_adapter(*fresh, dir.file("d"));
  torch::NoGradGuard g;
  EXPECT_TRUE(bit_equal(fresh->forward(ids()).logits, m->forward(ids()).logits));
  auto tied = lora({"c_attn"});
  tied.modules_to_save = {"lm_head"};
  EXPECT_THROW(fresh->add_adapter("t", tied), Error);
}

TEST(PeftModel, SavePretrainedUsesHFLayoutAndOverwritesAtomically) {
  auto m = gpt2();
  m->add_adapter("default", lora({"c_attn"}));
  m->add_adapter("other", lora({"c_fc"}));
  TempDir dir;
  checkpoint::save_pretrained(*m, dir.file("out"));
  EXPECT_TRUE(std::filesystem::exists(dir.file("out/adapter_model.safetensors")));
  EXPECT_TRUE(std::filesystem::exists(dir.file("out/other/adapter_config.json")));
  checkpoint::save_adapter(*m, dir.file("out"), "default");  // overwrite in place
  int stray = 0;
  for (auto& e : std::filesystem::recursive_directory_iterator(dir.path()))
    stray += e.path().filename().string().find(".tmp-") != std::string::npos;
  EXPECT_EQ(stray, 0);
  EXPECT_THROW(checkpoint::save_adapter(*m, dir.file("x"), "missing"), Error);
  EXPECT_FALSE(std::filesystem::exists(dir.file("x")));
}

}  // namespace
}  // namespace peft::test

namespace peft::test {
namespace {

TEST(Hotswap, LoadsADeltaIntoTheSameSlotAndRefusesAnotherShape) {
  TempDir dir;
  // Two deltas of one shape (different weights), one of another rank.
  auto first = gpt2(), second = gpt2(), wider = gpt2();
  auto config = lora({"c_attn"});
  torch::manual_seed(1);
  first->add_adapter("default", config);
  torch::manual_seed(2);
  second->add_adapter("default", config);
  auto other = config;
  other.r = 4;
  wider->add_adapter("default", other);
  checkpoint::save_adapter(*second, dir.file("second"));
  checkpoint::save_adapter(*wider, dir.file("wider"));
  const at::Tensor expected = second->forward(ids()).logits;

  auto server = gpt2();
  checkpoint::save_adapter(*first, dir.file("first"));
  checkpoint::load_adapter(*server, dir.file("first"));
  const auto before = server->adapter_state_dict("default");
  const void* storage = before.begin()->second.data_ptr();
  checkpoint::LoadOptions swap;
  swap.hotswap = true;
  checkpoint::load_adapter(*server, dir.file("second"), "default", swap);
  EXPECT_TRUE(bit_equal(server->forward(ids()).logits, expected));
  EXPECT_EQ(server->adapter_state_dict("default").begin()->second.data_ptr(), storage) << "same tensors, new values";
  EXPECT_EQ(server->adapters().size(), 1u);

  // Another rank: refused by field, nothing changed.
  const at::Tensor kept = server->forward(ids()).logits;
  const std::string error = error_of([&] { checkpoint::load_adapter(*server, dir.file("wider"), "default", swap); });
  EXPECT_NE(error.find("field 'r' = 4"), std::string::npos) << error;
  EXPECT_NE(error.find("hotswap"), std::string::npos) << error;
  EXPECT_TRUE(bit_equal(server->forward(ids()).logits, kept));
  // No slot of that name; a merged slot.
  EXPECT_NE(error_of([&] { checkpoint::load_adapter(*server, dir.file("second"), "other", swap); }).find("no adapter named 'other'"),
            std::string::npos);
  server->merge_adapter();
  EXPECT_NE(error_of([&] { checkpoint::load_adapter(*server, dir.file("second"), "default", swap); }).find("merged"),
            std::string::npos);
}

}  // namespace
}  // namespace peft::test
