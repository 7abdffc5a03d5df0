// The command-line tools, run as real processes.
#include <cstdlib>

#include <torch/torch.h>

#include "peft/core/safetensors.h"
#include "test_util.h"

#ifdef PEFT_FORWARD_BIN

namespace peft::test {
namespace {

int run(const std::string& cmd) { return std::system((cmd + " > /dev/null 2>&1").c_str()); }

double max_file_diff(const std::string& ours, const std::string& ref) {
  auto a = safetensors::load_file(ours);
  auto b = safetensors::load_file(ref);
  EXPECT_EQ(a.size(), b.size());
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

}  // namespace
}  // namespace peft::test

#endif
