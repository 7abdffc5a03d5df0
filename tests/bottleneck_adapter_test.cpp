// Bottleneck adapters: placement per preset, parameter counts by formula, Houlsby's
// near-identity init, and the saved key layout.
#include <torch/torch.h>

#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace peft::test {
namespace {

TEST(BottleneckAdapter, CountsFollowTheFormulaPerPreset) {
  const int64_t d = 64, layers = 2;
  for (const auto& [preset, slots] : std::vector<std::pair<std::string, int64_t>>{{"pfeiffer", 1}, {"parallel", 2}}) {
    PeftModel model(models::load_pretrained(fixture("hf/models/bert")));
    model.add_adapter("default", *methods::parse_config(
                                     {{"peft_type", "BOTTLENECK_ADAPTER"}, {"preset", preset}, {"reduction_factor", 16}}));
    const int64_t m = d / 16;
    EXPECT_EQ(element_count(model.trainable_parameters()), layers * slots * (2 * d * m + m + d)) << preset;
  }
  // Houlsby: both slots plus every LayerNorm (2 per layer + embeddings' one, each 2·d).
  PeftModel houlsby(models::load_pretrained(fixture("hf/models/bert")));
  houlsby.add_adapter("default", *methods::parse_config({{"peft_type", "BOTTLENECK_ADAPTER"}, {"preset", "houlsby"},
                                                         {"bottleneck_size", 8}}));
  EXPECT_EQ(element_count(houlsby.trainable_parameters()), layers * 2 * (2 * d * 8 + 8 + d) + (2 * layers + 1) * 2 * d);
  auto state = houlsby.adapter_state_dict("default");
  EXPECT_TRUE(state.count("base_model.model.bert.encoder.layer.1.adapters.attention.down.weight"));
  EXPECT_TRUE(state.count("base_model.model.bert.encoder.layer.0.adapters.ffn.up.bias"));
  EXPECT_TRUE(state.count("base_model.model.bert.embeddings.LayerNorm.weight"));
}

TEST(BottleneckAdapter, HoulsbyInitIsNearIdentityAndMergingIsRefused) {
  auto base = models::load_pretrained(fixture("hf/models/llama"));
  base->eval();
  auto inputs = fixture_inputs("hf/models/llama/inputs.safetensors", false);
  torch::NoGradGuard g;
  auto reference = base->forward(inputs).logits.clone();
  PeftModel model(base);
  model.add_adapter("default", *methods::parse_config({{"peft_type", "BOTTLENECK_ADAPTER"}, {"preset", "houlsby"},
                                                       {"init_weights", "houlsby"}, {"bottleneck_size", 4}}));
  for (auto& [k, t] : model.adapter_state_dict("default"))
    if (k.find(".adapters.") != std::string::npos && k.find("weight") != std::string::npos)
      EXPECT_LE(t.abs().max().item<double>(), 2e-2 + 1e-9) << k;
  const double diff = max_abs_diff(model.forward(inputs).logits, reference);
  EXPECT_GT(diff, 0.0);
  EXPECT_LT(diff, 0.05) << "near-identity";
  try {
    model.merge_adapter();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nonlinearity"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace peft::test
