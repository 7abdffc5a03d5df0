// The command-line tools, run as real processes.
#include <cstdlib>
#include <fstream>

#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "test_util.h"

#ifdef PEFT_FORWARD_BIN

namespace peft::test {
namespace {

int run(const std::string& cmd) { return std::system((cmd + " > /dev/null 2>&1").c_str()); }

double max_file_diff(const std::string& ours, const std::string& ref) {
  auto a = safetensors::load_file(ours);
  auto b = safetensors::load_file(ref);
  EXPECT_GE(a.size(), b.size());
  double worst = 0;
  for (auto& [k, t] : b) {
    EXPECT_TRUE(a.count(k)) << k;
    if (a.count(k)) worst = std::max(worst, max_abs_diff(a.at(k), t));
  }
  return worst;
}

TEST(PeftForwardCli, BaseAdapterAndMergedMatchTheFixtures) {
  TempDir dir;
  const std::string bin = PEFT_FORWARD_BIN;
  const std::string model = fixture("hf/models/gpt2"), inputs = fixture("hf/models/gpt2/inputs.safetensors");
  ASSERT_EQ(run(bin + " --model " + model + " --inputs " + inputs + " --out " + dir.file("base.safetensors")), 0);
  EXPECT_LT(max_file_diff(dir.file("base.safetensors"), fixture("hf/models/gpt2/outputs.safetensors")), 1e-5);
  const std::string adapter = fixture("hf/adapters/gpt2_lora/adapter");
  ASSERT_EQ(run(bin + " --model " + model + " --adapter " + adapter + " --inputs " + inputs + " --out " +
                dir.file("lora.safetensors")), 0);
  EXPECT_LT(max_file_diff(dir.file("lora.safetensors"), fixture("hf/adapters/gpt2_lora/outputs.safetensors")), 1e-5);
  ASSERT_EQ(run(bin + " --model " + model + " --adapter " + adapter + " --merge --inputs " + inputs + " --out " +
                dir.file("merged.safetensors")), 0);
  EXPECT_LT(max_file_diff(dir.file("merged.safetensors"), fixture("hf/adapters/gpt2_lora/merged_outputs.safetensors")),
            1e-5);
}

TEST(PeftForwardCli, BadInputsFailCleanlyWithoutOutput) {
  TempDir dir;
  const std::string bin = PEFT_FORWARD_BIN;
  EXPECT_NE(run(bin + " --model " + dir.path() + " --inputs x --out " + dir.file("o.safetensors")), 0);
  EXPECT_NE(run(bin + " --model " + fixture("hf/models/gpt2") + " --inputs " + fixture("hf/models/gpt2/config.json") +
                " --out " + dir.file("o.safetensors")), 0);
  EXPECT_NE(run(bin + " --model " + fixture("hf/models/gpt2") + " --merge --inputs x --out o"), 0);
  EXPECT_FALSE(std::filesystem::exists(dir.file("o.safetensors")));
}

TEST(PeftForwardCli, EveryFamilyHeadAndLoraMatchesTheFixtures) {
  TempDir dir;
  const std::string bin = PEFT_FORWARD_BIN, out = dir.file("o.safetensors");
  for (const std::string m : {"bert", "llama", "llama_mha", "vit"}) {
    const std::string model = fixture("hf/models/" + m), inputs = model + "/inputs.safetensors";
    ASSERT_EQ(run(bin + " --model " + model + " --inputs " + inputs + " --out " + out), 0) << m;
    EXPECT_LT(max_file_diff(out, model + "/outputs.safetensors"), 1e-5) << m;
  }
  for (const std::string m : {"bert", "llama", "t5"}) {  // t5: encoder and decoder states, and the loss
    const std::string model = fixture("hf/models/" + m), adapter = fixture("hf/adapters/" + m + "_lora");
    const std::string args = " --model " + model + " --adapter " + adapter + "/adapter --inputs " + model +
                             "/inputs.safetensors --out " + out;
    ASSERT_EQ(run(bin + args), 0) << m;
    EXPECT_LT(max_file_diff(out, adapter + "/outputs.safetensors"), 1e-5) << m;
    ASSERT_EQ(run(bin + args + " --merge"), 0) << m;
    EXPECT_LT(max_file_diff(out, adapter + "/merged_outputs.safetensors"), 1e-5) << m;
  }
  // HF's prompt-learning and adaption-prompt files.
  for (const auto& [name, base] : std::vector<std::pair<std::string, std::string>>{
           {"gpt2_prefix", "gpt2"}, {"gpt2_prefix_proj", "gpt2"}, {"gpt2_prompt", "gpt2"},
           {"llama_adaption_prompt", "llama_mha"}}) {
    const std::string model = fixture("hf/models/" + base), adapter = fixture("hf/adapters/" + name);
    ASSERT_EQ(run(bin + " --model " + model + " --adapter " + adapter + "/adapter --inputs " + model +
                  "/inputs.safetensors --out " + out), 0) << name;
    EXPECT_LT(max_file_diff(out, adapter + "/outputs.safetensors"), 1e-5) << name;
  }
  // A bare encoder writes its pooler output too.
  ASSERT_EQ(run(bin + " --task feature_extraction --model " + fixture("hf/models/bert") + " --inputs " +
                fixture("hf/models/bert/inputs.safetensors") + " --out " + out), 0);
  auto bare = safetensors::load_file(out);
  EXPECT_FALSE(bare.count("logits"));
  auto ref = safetensors::load_file(fixture("hf/models/bert/outputs.safetensors"));
  EXPECT_LT(max_abs_diff(bare.at("pooler_output"), ref.at("pooler_output")), 1e-5);
}

TEST(PeftForwardCli, LoadsDeltasOfEveryMethod) {
  // Deltas this library writes (not only HF PEFT's) run in peft-forward exactly as in process.
  const std::vector<nlohmann::json> configs = {
      {{"peft_type", "IA3"}, {"init_ia3_weights", false}},
      {{"peft_type", "BITFIT"}},
      {{"peft_type", "BOTTLENECK_ADAPTER"}, {"preset", "houlsby"}, {"bottleneck_size", 8}, {"init_weights", "houlsby"}},
      {{"peft_type", "COMPACTER"}, {"bottleneck_size", 8}, {"init_weights", "compacter"}},
      {{"peft_type", "ADAMIX"}, {"bottleneck_size", 8}},
      {{"peft_type", "SPARSE_ADAPTER"}, {"pruned_fraction", 0.5}},
      {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 3}, {"prefix_projection", true}},
      {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}},
      {{"peft_type", "P_TUNING"}, {"num_virtual_tokens", 3}, {"encoder_reparameterization_type", "LSTM"}},
      {{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 3}, {"gate", "per_head_tanh"}},
      {{"peft_type", "KADAPTATION"}},
      {{"peft_type", "FACT"}, {"variant", "tk"}},
      {{"peft_type", "DSEE"}, {"num_sparse", 32}, {"grebsmo_iterations", 10}}};
  const std::string model_dir = fixture("hf/models/gpt2"), inputs = fixture("hf/models/gpt2/inputs.safetensors");
  for (const auto& cfg : configs) {
    TempDir dir;
    PeftModel model(models::load_pretrained(model_dir));
    model.add_adapter("default", *methods::parse_config(cfg));
    {
      torch::NoGradGuard g;
      for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * 0.01);
    }
    model.eval();
    checkpoint::save_adapter(model, dir.file("delta"));
    torch::NoGradGuard g;
    auto expected = model.forward(fixture_inputs("hf/models/gpt2/inputs.safetensors")).logits;
    ASSERT_EQ(run(std::string(PEFT_FORWARD_BIN) + " --threads 1 --model " + model_dir + " --adapter " + dir.file("delta") +
                  " --inputs " + inputs + " --out " + dir.file("o.safetensors")),
              0)
        << cfg.dump();
    EXPECT_LT(max_abs_diff(safetensors::load_file(dir.file("o.safetensors")).at("logits"), expected), 1e-5) << cfg.dump();
  }
}

#ifdef PEFT_INSPECT_BIN
TEST(PeftInspectCli, PrintsTheFoldedTreeAndFailsCleanly) {
  TempDir dir;
  const std::string bin = PEFT_INSPECT_BIN;
  ASSERT_EQ(std::system((bin + " " + fixture("hf/models/vit") + " > " + dir.file("tree.txt") + " 2>&1").c_str()), 0);
  std::ifstream in(dir.file("tree.txt"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("layer.0-1  ViTLayer ×2"), std::string::npos) << text;
  EXPECT_NE(text.find("trainable params: 0 || all params:"), std::string::npos) << text;
  EXPECT_NE(run(bin + " " + dir.path()), 0);
  EXPECT_NE(run(bin + " " + fixture("hf/models/vit") + " --task causal_lm"), 0);
}

TEST(PeftInspectCli, CountsLlamaAdapterOnASevenBillionConfigWithoutBuildingIt) {
  // A LLaMA-7B config.json alone (no weights; building it would take 27 GB of float32).
  TempDir dir;
  std::filesystem::create_directories(dir.file("llama7b"));
  core::write_json_file(dir.file("llama7b/config.json"),
                        {{"model_type", "llama"}, {"hidden_size", 4096}, {"num_hidden_layers", 32},
                         {"num_attention_heads", 32}, {"intermediate_size", 11008}, {"vocab_size", 32000}});
  core::write_json_file(dir.file("paper.json"), {{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 10},
                                                  {"adapter_layers", 30}, {"gate", "per_head_tanh"}});
  const std::string cmd = std::string(PEFT_INSPECT_BIN) + " " + dir.file("llama7b") + " --count --config " +
                          dir.file("paper.json") + " > " + dir.file("count.txt") + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream in(dir.file("count.txt"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("trainable params: 1,229,760"), std::string::npos) << text;
  // A method without a geometry-only count says so.
  core::write_json_file(dir.file("lora.json"), {{"peft_type", "LORA"}});
  EXPECT_NE(run(std::string(PEFT_INSPECT_BIN) + " " + dir.file("llama7b") + " --count --config " + dir.file("lora.json")), 0);
}
#endif

}  // namespace
}  // namespace peft::test

#endif
