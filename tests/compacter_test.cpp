// Compacter: the PHM weight is Σ A_i ⊗ B_i, A is shared by every layer (stored once), and the
// parameter count reproduces the paper's T5-base figures (0.047 % / ~0.07 %, layer norms included).
#include <torch/torch.h>

#include "peft/methods/compacter.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace peft::test {
namespace {

TEST(Compacter, PhmWeightIsASumOfKroneckerProducts) {
  torch::manual_seed(0);
  methods::CompacterConfig c;
  c.phm_dim = 2;
  c.phm_rank = 2;
  c.init_weights = "compacter";
  methods::PhmRule rule(2, torch::TensorOptions());
  methods::PhmLinear layer(6, 4, rule, true, c, false, torch::TensorOptions());
  at::Tensor expected = torch::zeros({6, 4});
  for (int64_t i = 0; i < 2; ++i)
    expected += torch::kron(rule->weight[i], torch::matmul(layer->phm_s[i], layer->phm_t[i]));
  EXPECT_LT(max_abs_diff(layer->kron_weight(), expected), 1e-6);
  auto x = torch::randn({3, 6});
  EXPECT_LT(max_abs_diff(layer->forward(x), torch::matmul(x, expected) + layer->b), 1e-5);
}

TEST(Compacter, SharedRuleIsOneTensorAndCountsMatchThePaper) {
  PeftModel model(models::load_pretrained(fixture("hf/models/bert")));
  model.add_adapter("default", *methods::parse_config({{"peft_type", "COMPACTER"}, {"reduction_factor", 16},
                                                       {"train_layer_norms", false}}));
  int64_t rules = 0;
  for (auto& [k, t] : model.adapter_state_dict("default")) rules += k.find("phm_rule") != std::string::npos;
  EXPECT_EQ(rules, 1) << "A is shared by every PHM layer";
  methods::CompacterConfig c;
  c.reduction_factor = 16;
  EXPECT_EQ(element_count(model.trainable_parameters()), c.adapter_parameters(64, 2));

  // T5-base: d = 768, 12 + 12 blocks with adapters, 62 layer norms of 768, 222,903,552 parameters.
  const double t5 = 222903552.0, norms = 62 * 768;
  methods::CompacterConfig pp;
  pp.variant = "compacter++";
  const double compacter_pp = (static_cast<double>(pp.adapter_parameters(768, 24)) + norms) / t5 * 100.0;
  const double compacter = (static_cast<double>(methods::CompacterConfig().adapter_parameters(768, 24)) + norms) / t5 * 100.0;
  RecordProperty("t5_base_compacter_pp_percent", fmt::format("{:.4f}", compacter_pp));
  RecordProperty("t5_base_compacter_percent", fmt::format("{:.4f}", compacter));
  EXPECT_NEAR(compacter_pp, 0.047, 0.0005);
  EXPECT_NEAR(compacter, 0.07, 0.005);
}

TEST(Compacter, PhmDimMustDivideTheWidths) {
  PeftModel model(models::load_pretrained(fixture("hf/models/bert")));
  try {
    model.add_adapter("default", *methods::parse_config({{"peft_type", "COMPACTER"}, {"phm_dim", 3}, {"bottleneck_size", 8}}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("phm_dim 3 must divide the hidden size (64)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace peft::test
