// BitFit: exactly the chosen biases train (the count is their total size), saved under their own
// names; projections without a bias can get a zero one.
#include <torch/torch.h>

#include "peft/core/strings.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace peft::test {
namespace {

TEST(BitFit, TrainsEveryBiasOrTheNamedOnes) {
  auto base = models::load_pretrained(fixture("hf/models/bert"));
  int64_t biases = 0;
  for (auto& item : base->named_parameters())
    if (core::ends_with(item.key(), ".bias")) biases += item.value().numel();
  PeftModel all(base);
  all.add_adapter("default", *methods::parse_config({{"peft_type", "BITFIT"}}));
  EXPECT_EQ(element_count(all.trainable_parameters()), biases);
  EXPECT_TRUE(all.adapter_state_dict("default").count("base_model.model.bert.encoder.layer.1.attention.self.query.bias"));

  PeftModel some(models::load_pretrained(fixture("hf/models/bert")));
  some.add_adapter("default", *methods::parse_config({{"peft_type", "BITFIT"}, {"bias_modules", {"query", "intermediate.dense"}}}));
  EXPECT_EQ(element_count(some.trainable_parameters()), 2 * (64 + 128));  // per layer: query [64], intermediate [128]
}

TEST(BitFit, AddsZeroBiasesWhereTheModelHasNone) {
  PeftModel llama(models::load_pretrained(fixture("hf/models/llama")));
  try {
    llama.add_adapter("default", *methods::parse_config({{"peft_type", "BITFIT"}}));
    FAIL() << "LLaMA has no bias to train";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add_missing_biases"), std::string::npos) << e.what();
  }
  llama.add_adapter("added", *methods::parse_config({{"peft_type", "BITFIT"}, {"add_missing_biases", true}}));
  // q 64 + k 32 + v 32 + o 64 + gate 176 + up 176 + down 64 per layer, lm_head 1000.
  EXPECT_EQ(element_count(llama.trainable_parameters()), 2 * (64 + 32 + 32 + 64 + 176 + 176 + 64) + 1000);
  EXPECT_TRUE(llama.adapter_state_dict("added").count("base_model.model.model.layers.0.mlp.down_proj.bias"));
}

}  // namespace
}  // namespace peft::test
