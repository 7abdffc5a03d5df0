// LoRA against Hugging Face PEFT 0.7.1: loading its files, outputs, merging, saving in its
// format, and one AdamW training step.
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"
#include "peft/methods/lora.h"
#include "peft/models/load.h"
#include "peft/optim/adamw.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace peft::test {
namespace {

const std::string kBase = "hf/models/gpt2";
const std::string kAdapter = "hf/adapters/gpt2_lora";
const std::string kStep = "hf/training/gpt2_lora_step";

models::ModelInputs inputs_from(const std::string& file, bool hidden = true) { return fixture_inputs(file, hidden); }

std::unique_ptr<PeftModel> hf_lora(bool trainable = false) {
  auto model = std::make_unique<PeftModel>(models::load_pretrained(fixture(kBase)));
  checkpoint::LoadOptions opts;
  opts.is_trainable = trainable;
  checkpoint::load_adapter(*model, fixture(kAdapter + "/adapter"), "default", opts);
  model->eval();
  return model;
}

TEST(LoraHF, OutputsMatchPeft) {
  auto model = hf_lora();
  torch::NoGradGuard g;
  auto inputs = inputs_from(kBase + "/inputs.safetensors");
  double diff = max_output_diff(model->forward(inputs), kAdapter + "/outputs.safetensors");
  RecordProperty("max_abs_diff", fmt::format("{:.3e}", diff));
  EXPECT_LT(diff, 1e-5);
  // The fixture is meant to detect an effect of ~0.036 on the logits: make sure we see it.
  model->disable_adapters();
  EXPECT_GT(max_output_diff(model->forward(inputs), kAdapter + "/outputs.safetensors"), 1e-2);
}

TEST(LoraHF, MergedMatchesPeftMergeAndUnload) {
  auto model = hf_lora();
  torch::NoGradGuard g;
  auto inputs = inputs_from(kBase + "/inputs.safetensors");
  auto layer = safetensors::load_file(fixture(kAdapter + "/merged_layer.safetensors"));
  auto params = model->base_model().named_parameters();
  const std::string w = "transformer.h.0.attn.c_attn.weight";
  EXPECT_TRUE(bit_equal(params[w], layer.at("base." + w)));
  model->merge_adapter();
  EXPECT_LT(max_abs_diff(params[w], layer.at("merged." + w)), 1e-7);
  EXPECT_TRUE(bit_equal(params["transformer.h.0.attn.c_attn.bias"], layer.at("merged.transformer.h.0.attn.c_attn.bias")));
  EXPECT_LT(max_output_diff(model->forward(inputs), kAdapter + "/merged_outputs.safetensors"), 1e-5);
  model->unmerge_adapter();
  EXPECT_LT(max_abs_diff(params[w], layer.at("base." + w)), 1e-6);
  EXPECT_LT(max_output_diff(model->forward(inputs), kAdapter + "/outputs.safetensors"), 1e-5);
  auto merged = model->merge_and_unload();
  EXPECT_LT(max_output_diff(merged->forward(inputs), kAdapter + "/merged_outputs.safetensors"), 1e-5);
}

TEST(LoraHF, SavedDeltaHasPeftKeysShapesAndConfig) {
  auto model = hf_lora();
  TempDir dir;
  checkpoint::save_adapter(*model, dir.file("out"));
  safetensors::File ours(dir.file("out/adapter_model.safetensors"));
  safetensors::File theirs(fixture(kAdapter + "/adapter/adapter_model.safetensors"));
  ASSERT_EQ(ours.tensors().size(), theirs.tensors().size());
  for (const auto& t : theirs.tensors()) {
    ASSERT_TRUE(ours.contains(t.name)) << t.name;
    EXPECT_EQ(ours.info(t.name).shape, t.shape);
    EXPECT_TRUE(bit_equal(ours.load(t.name), theirs.load(t.name))) << t.name;
  }
  EXPECT_EQ(ours.metadata().at("format"), "pt");
  EXPECT_EQ(ours.metadata().at("peft_cpp_base_fingerprint"), model->base_fingerprint());

  auto a = core::read_json_file(dir.file("out/adapter_config.json"));
  auto b = core::read_json_file(fixture(kAdapter + "/adapter/adapter_config.json"));
  std::vector<std::string> ka, kb;
  for (auto it = a.begin(); it != a.end(); ++it) ka.push_back(it.key());
  for (auto it = b.begin(); it != b.end(); ++it) kb.push_back(it.key());
  EXPECT_EQ(ka, kb);
  for (auto it = b.begin(); it != b.end(); ++it) EXPECT_EQ(a[it.key()], it.value()) << it.key();
}

TEST(LoraHF, OneAdamWStepMatchesPeft) {
  auto model = hf_lora(/*trainable=*/true);
  auto batch = inputs_from(kStep + "/batch.safetensors", false);
  auto grads_ref = safetensors::load_file(fixture(kStep + "/grads.safetensors"));
  auto after_ref = safetensors::load_file(fixture(kStep + "/lora_after_adamw.safetensors"));
  auto before_ref = safetensors::load_file(fixture(kStep + "/lora_before.safetensors"));
  auto adam_ref = safetensors::load_file(fixture(kStep + "/adamw_state.safetensors"));
  auto loss_after_ref = safetensors::load_file(fixture(kStep + "/loss_after_step.safetensors"));

  auto state = model->adapter_state_dict("default");
  ASSERT_EQ(state.size(), before_ref.size());
  for (auto& [k, t] : before_ref) EXPECT_TRUE(bit_equal(state.at(k), t)) << k;

  // The library's own AdamW (what the trainer steps with), its state compared with torch's.
  std::vector<std::pair<std::string, at::Tensor>> params(state.begin(), state.end());
  EXPECT_EQ(params.size(), model->trainable_parameters().size());
  optim::AdamWOptions o;
  o.lr = 1e-3;
  o.weight_decay = 0.0;
  optim::AdamW opt(params, o);
  opt.zero_grad();
  auto loss = model->forward(batch).loss;
  EXPECT_NEAR(loss.item<double>(), grads_ref.at("loss").item<double>(), 1e-5);
  loss.backward();
  for (auto& [k, t] : state) {
    const auto& ref = grads_ref.at(k);
    const double tol = std::max(1e-7, 1e-4 * ref.abs().max().item<double>());
    EXPECT_LT(max_abs_diff(t.grad(), ref), tol) << k;
  }
  opt.step(1e-3);
  const auto moments = opt.state_dict();
  for (auto& [k, t] : state) {
    EXPECT_LT(max_abs_diff(t, after_ref.at(k)), 1e-5) << k;
    const auto& m1 = adam_ref.at("exp_avg." + k), &m2 = adam_ref.at("exp_avg_sq." + k);
    EXPECT_LT(max_abs_diff(moments.at("exp_avg." + k), m1), std::max(1e-9, 1e-4 * m1.abs().max().item<double>())) << k;
    EXPECT_LT(max_abs_diff(moments.at("exp_avg_sq." + k), m2), std::max(1e-12, 1e-4 * m2.abs().max().item<double>())) << k;
  }
  EXPECT_EQ(opt.steps(), 1);
  torch::NoGradGuard g;
  EXPECT_NEAR(model->forward(batch).loss.item<double>(), loss_after_ref.at("loss").item<double>(), 1e-5);
}

TEST(LoraHF, TrainedBiasesUseTheKeysPeftLoads) {
  // HF PEFT (0.7 on) wraps an adapted layer: its bias is "<layer>.base_layer.bias" in the model's
  // state dict, the name bias="all" saves and load_state_dict fills; other biases keep their names.
  const std::string p = "base_model.model.transformer.h.0.";
  for (const std::string bias : {"all", "lora_only"}) {
    PeftModel model(models::load_pretrained(fixture("hf/models/gpt2")));
    model.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"c_attn"}},
                                                         {"bias", bias}}));
    {
      torch::NoGradGuard g;
      for (auto& t : model.trainable_parameters()) t.add_(torch::randn_like(t) * 0.1);
    }
    auto state = model.adapter_state_dict("default");
    EXPECT_TRUE(state.count(p + "attn.c_attn.base_layer.bias")) << bias;
    EXPECT_FALSE(state.count(p + "attn.c_attn.bias")) << bias;
    EXPECT_EQ(state.count(p + "mlp.c_fc.bias"), bias == "all" ? 1u : 0u) << bias;
    EXPECT_EQ(state.count(p + "ln_1.bias"), bias == "all" ? 1u : 0u) << bias;
    TempDir dir;
    checkpoint::save_adapter(model, dir.file("delta"));
    PeftModel fresh(models::load_pretrained(fixture("hf/models/gpt2")));
    checkpoint::load_adapter(fresh, dir.file("delta"));
    auto input = fixture_inputs("hf/models/gpt2/inputs.safetensors", false);
    model.eval();
    fresh.eval();
    torch::NoGradGuard g;
    EXPECT_TRUE(bit_equal(model.forward(input).logits, fresh.forward(input).logits)) << bias;
    // A file with the earlier spelling ("<layer>.bias") still loads, to the same function.
    auto file = safetensors::load_file(dir.file("delta/adapter_model.safetensors"));
    auto moved = file.extract(p + "attn.c_attn.base_layer.bias");
    moved.key() = p + "attn.c_attn.bias";
    file.insert(std::move(moved));
    safetensors::save_file(dir.file("delta/adapter_model.safetensors"), file);
    PeftModel old(models::load_pretrained(fixture("hf/models/gpt2")));
    checkpoint::load_adapter(old, dir.file("delta"));
    old.eval();
    EXPECT_TRUE(bit_equal(model.forward(input).logits, old.forward(input).logits)) << bias;
  }
}

TEST(LoraHF, WrongBaseIsRefusedWithTheReason) {
  auto model = hf_lora();
  TempDir dir;
  checkpoint::save_adapter(*model, dir.file("delta"));
  auto other = models::load_pretrained(fixture(kBase));
  {
    torch::NoGradGuard g;
    other->named_parameters()["transformer.wte.weight"].mul_(1.5);
  }
  PeftModel wrong(other);
  try {
    checkpoint::load_adapter(wrong, dir.file("delta"));
    FAIL() << "a delta for another base was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("different base model"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(wrong.has_adapter("default")) << "nothing is attached after a refused load";
  checkpoint::LoadOptions force;
  force.allow_base_mismatch = true;
  EXPECT_NO_THROW(checkpoint::load_adapter(wrong, dir.file("delta"), "default", force));
}

TEST(LoraHF, CorruptDeltasAreRejectedByName) {
  TempDir dir;
  std::filesystem::copy(fixture(kAdapter + "/adapter"), dir.file("a"));
  auto tensors = safetensors::load_file(dir.file("a/adapter_model.safetensors"));
  const std::string victim = "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight";
  auto check = [&](const std::string& needle) {
    PeftModel model(models::load_pretrained(fixture(kBase)));
    try {
      checkpoint::load_adapter(model, dir.file("a"));
      FAIL() << "accepted; expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(model.has_adapter("default"));
  };
  auto missing = tensors;
  missing.erase(victim);
  safetensors::save_file(dir.file("a/adapter_model.safetensors"), missing);
  check(victim);
  auto shaped = tensors;
  shaped[victim] = torch::zeros({192, 5});
  safetensors::save_file(dir.file("a/adapter_model.safetensors"), shaped);
  check(victim);
  auto extra = tensors;
  extra["base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight"] = torch::zeros({4, 64});
  safetensors::save_file(dir.file("a/adapter_model.safetensors"), extra);
  check("mlp.c_fc.lora_A.weight");
  safetensors::save_file(dir.file("a/adapter_model.safetensors"), tensors);
  auto cfg = core::read_json_file(dir.file("a/adapter_config.json"));
  cfg["use_dora"] = true;
  core::write_json_file(dir.file("a/adapter_config.json"), cfg);
  check("use_dora");
}

}  // namespace
}  // namespace peft::test
