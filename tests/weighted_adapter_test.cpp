// Weighted combinations of LoRA deltas (add_weighted_adapter): HF PEFT 0.7.1's linear / cat /
// svd results, and the published definitions of TIES, DARE and magnitude pruning.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"
#include "peft/methods/lora.h"
#include "peft/methods/task_merging.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace peft::test {
namespace {

const std::string kBase = "hf/models/gpt2";

std::string weighted(const std::string& type) { return "hf/adapters/gpt2_weighted_" + type; }

/// The base with the fixture's sources loaded under their names.
std::unique_ptr<PeftModel> with_sources(const std::string& type) {
  auto model = std::make_unique<PeftModel>(models::load_pretrained(fixture(kBase)));
  const auto combine = core::read_json_file(fixture(weighted(type) + "/combine.json"));
  for (const auto& name : combine["adapters"])
    checkpoint::load_adapter(*model, fixture(weighted(type) + "/sources/" + name.get<std::string>()), name);
  model->eval();
  return model;
}

void combine_as_fixture(PeftModel& model, const std::string& type) {
  const auto combine = core::read_json_file(fixture(weighted(type) + "/combine.json"));
  methods::WeightedCombination how;
  how.combination_type = combine["combination_type"];
  if (!combine["svd_rank"].is_null()) how.svd_rank = combine["svd_rank"].get<int64_t>();
  model.add_weighted_adapter(combine["adapters"].get<std::vector<std::string>>(),
                             combine["weights"].get<std::vector<double>>(), "combined", how);
}

/// Every layer's B·A (the factors of an SVD are unique only up to signs).
std::map<std::string, at::Tensor> products(const std::map<std::string, at::Tensor>& state) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [key, a] : state) {
    const auto at = key.find(".lora_A.");
    if (at == std::string::npos) continue;
    const std::string layer = key.substr(0, at);
    std::string b_key = key;
    b_key.replace(at, 8, ".lora_B.");
    out[layer] = state.at(b_key).to(torch::kFloat).matmul(a.to(torch::kFloat));
  }
  return out;
}

class WeightedHF : public ::testing::TestWithParam<std::string> {};

TEST_P(WeightedHF, MatchesPeftsCombinedAdapter) {
  const std::string type = GetParam();
  auto model = with_sources(type);
  combine_as_fixture(*model, type);
  model->set_adapter("combined");
  torch::NoGradGuard g;
  const auto inputs = fixture_inputs(kBase + "/inputs.safetensors");
  const double diff = max_output_diff(model->forward(inputs), weighted(type) + "/outputs.safetensors");
  RecordProperty("max_abs_diff", fmt::format("{:.3e}", diff));
  EXPECT_LT(diff, 1e-5);
  // The combined adapter's config and its B·A per layer, against the file HF PEFT saved.
  const auto theirs_config = core::read_json_file(fixture(weighted(type) + "/adapter/adapter_config.json"));
  const auto& ours = dynamic_cast<const methods::LoraConfig&>(model->adapter_config("combined"));
  EXPECT_EQ(ours.r, theirs_config["r"].get<int64_t>());
  EXPECT_EQ(ours.lora_alpha, theirs_config["lora_alpha"].get<double>());
  const auto theirs = products(safetensors::load_file(fixture(weighted(type) + "/adapter/adapter_model.safetensors")));
  const auto mine = products(model->adapter_state_dict("combined"));
  ASSERT_EQ(mine.size(), theirs.size());
  for (const auto& [layer, ba] : theirs) {
    ASSERT_TRUE(mine.count(layer)) << layer;
    EXPECT_LT(max_abs_diff(mine.at(layer), ba), 1e-5) << layer;
  }
  // An ordinary adapter: saved and loaded onto a fresh base, it computes the same.
  TempDir dir;
  checkpoint::save_adapter(*model, dir.file("combined"), "combined");
  PeftModel fresh(models::load_pretrained(fixture(kBase)));
  fresh.eval();
  checkpoint::load_adapter(fresh, dir.file("combined"), "combined");
  EXPECT_TRUE(bit_equal(fresh.forward(inputs).logits, model->forward(inputs).logits));
  // And it merges like any LoRA.
  const auto unmerged = model->forward(inputs).logits.clone();
  model->merge_adapter();
  EXPECT_LT(max_abs_diff(model->forward(inputs).logits, unmerged), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Peft071, WeightedHF, ::testing::Values("linear", "cat", "svd"));

TEST(WeightedAdapter, SvdOfTheSumKeepsTheLeadingComponents) {
  // svd with the full rank of the sum reproduces Σ w s B A; a smaller rank is its best approximation.
  auto model = with_sources("svd");
  methods::WeightedCombination how;
  how.combination_type = "svd";
  how.svd_rank = 12;  // 4 + 8: the sum's rank
  model->add_weighted_adapter({"src0", "src2"}, {1.0, -0.5}, "full", how);
  const auto lin = model->linears().front().second;
  auto delta = [&](const std::string& a) {
    return std::dynamic_pointer_cast<nn::AdditiveWeightDelta>(lin->delta(a))->delta_weight().detach();
  };
  const at::Tensor expected = delta("src0") - 0.5 * delta("src2");
  EXPECT_LT(max_abs_diff(delta("full"), expected), 1e-5);
  how.svd_rank = 2;
  how.svd_clamp = 0.99;
  model->add_weighted_adapter({"src0", "src2"}, {1.0, -0.5}, "low", how);
  const at::Tensor low = delta("low");
  auto S = torch::linalg_svdvals(expected);
  // Eckart–Young: the rank-2 error is the norm of the dropped singular values (clamping adds a little).
  const double best = S.narrow(0, 2, S.size(0) - 2).pow(2).sum().sqrt().item<double>();
  EXPECT_LT((low - expected).norm().item<double>(), 1.05 * best);
  EXPECT_GE((low - expected).norm().item<double>(), best * (1 - 1e-4));
}

TEST(WeightedAdapter, FactorwiseTypesFollowPeftsDefinitions) {
  auto model = with_sources("linear");
  const auto lin = model->linears().front().second;
  auto lora = [&](const std::string& a) { return std::dynamic_pointer_cast<methods::LoraDelta>(lin->delta(a)); };
  const double s0 = lora("src0")->scaling(), s1 = lora("src1")->scaling();
  const std::vector<double> w = {0.7, 0.5};
  const std::vector<double> root = {std::sqrt(w[0] * s0), std::sqrt(w[1] * s1)};
  auto factors = [&](const std::string& a) {
    return std::make_pair(lora(a)->lora_A->weight.detach(), lora(a)->lora_B->weight.detach());
  };
  const auto [a0, b0] = factors("src0");
  const auto [a1, b1] = factors("src1");
  struct Case {
    std::string type;
    std::function<at::Tensor(const std::vector<at::Tensor>&, const std::vector<double>&)> reference;
  };
  const double density = 0.4;
  const std::vector<Case> cases = {
      {"ties", [&](const auto& t, const auto& ws) { return methods::merging::ties(t, ws, density, "total"); }},
      {"magnitude_prune", [&](const auto& t, const auto& ws) { return methods::merging::magnitude_prune(t, ws, density); }},
  };
  for (const auto& c : cases) {
    methods::WeightedCombination how;
    how.combination_type = c.type;
    how.density = density;
    model->add_weighted_adapter({"src0", "src1"}, w, c.type, how);
    const auto [a, b] = factors(c.type);
    EXPECT_TRUE(bit_equal(a, c.reference({a0, a1}, root))) << c.type;
    EXPECT_TRUE(bit_equal(b, c.reference({b0, b1}, root))) << c.type;
    EXPECT_EQ(lora(c.type)->scaling(), 1.0);
  }
  // DARE is seeded: the same seed, the same adapter; another seed, another one.
  methods::WeightedCombination dare;
  dare.combination_type = "dare_ties";
  dare.density = 0.5;
  dare.seed = 7;
  model->add_weighted_adapter({"src0", "src1"}, w, "dare_a", dare);
  model->add_weighted_adapter({"src0", "src1"}, w, "dare_b", dare);
  dare.seed = 8;
  model->add_weighted_adapter({"src0", "src1"}, w, "dare_c", dare);
  EXPECT_TRUE(bit_equal(factors("dare_a").first, factors("dare_b").first));
  EXPECT_FALSE(bit_equal(factors("dare_a").first, factors("dare_c").first));
}

TEST(TaskMerging, TiesTrimsElectsAndAveragesDisjointly) {
  const at::Tensor t1 = torch::tensor({0.9, -0.1, 0.5, -0.6});
  const at::Tensor t2 = torch::tensor({-0.2, 0.8, 0.4, -0.05});
  // Trim: keep the top 50 % of each by magnitude.
  EXPECT_TRUE(bit_equal(methods::merging::magnitude_prune_tensor(t1, 0.5), torch::tensor({0.9, 0.0, 0.0, -0.6})));
  EXPECT_TRUE(bit_equal(methods::merging::magnitude_prune_tensor(t2, 0.5), torch::tensor({0.0, 0.8, 0.4, 0.0})));
  // Elect (sum of trimmed): {0.9, 0.8, 0.4, -0.6} → signs {+, +, +, -}; disjoint mean of agreeing weighted entries.
  const at::Tensor merged = methods::merging::ties({t1, t2}, {1.0, 2.0}, 0.5, "total");
  EXPECT_LT(max_abs_diff(merged, torch::tensor({0.9, 1.6, 0.8, -0.6})), 1e-12);
  // Where signs conflict the minority is dropped, not averaged in.
  const at::Tensor a = torch::tensor({1.0, 1.0}), b = torch::tensor({-3.0, 0.5}), c = torch::tensor({2.5, 0.5});
  EXPECT_LT(max_abs_diff(methods::merging::ties({a, b, c}, {1, 1, 1}, 1.0, "total"), torch::tensor({1.75, 2.0 / 3})), 1e-12);
  // "frequency" elects by count: two positives beat one large negative.
  const at::Tensor d = torch::tensor({-5.0}), e = torch::tensor({1.0}), f = torch::tensor({1.0});
  EXPECT_LT(max_abs_diff(methods::merging::ties({d, e, f}, {1, 1, 1}, 1.0, "frequency"), torch::tensor({1.0})), 1e-12);
  EXPECT_LT(max_abs_diff(methods::merging::ties({d, e, f}, {1, 1, 1}, 1.0, "total"), torch::tensor({-5.0})), 1e-12);
}

TEST(TaskMerging, DareDropsAtRandomAndRescalesByTheDensity) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  const at::Tensor t = torch::full({200000}, 2.0, torch::kDouble);
  const at::Tensor pruned = methods::merging::random_prune_tensor(t, 0.3, gen);
  const at::Tensor kept = pruned != 0;
  EXPECT_NEAR(kept.to(torch::kDouble).mean().item<double>(), 0.3, 0.005);
  EXPECT_TRUE(bit_equal(pruned.masked_select(kept), torch::full({kept.sum().item<int64_t>()}, 2.0 / 0.3, torch::kDouble)));
  EXPECT_NEAR(pruned.mean().item<double>(), 2.0, 0.03) << "the expectation is kept";
  // dare_linear: Σ w_i · rescaled drop(t_i)
  auto g1 = at::make_generator<at::CPUGeneratorImpl>(5);
  auto g2 = at::make_generator<at::CPUGeneratorImpl>(5);
  const at::Tensor x = torch::randn({64}, torch::kDouble), y = torch::randn({64}, torch::kDouble);
  const at::Tensor dl = methods::merging::dare_linear({x, y}, {0.5, 2.0}, 0.6, g1);
  const at::Tensor px = methods::merging::random_prune_tensor(x, 0.6, g2);
  const at::Tensor py = methods::merging::random_prune_tensor(y, 0.6, g2);
  EXPECT_LT(max_abs_diff(dl, 0.5 * px + 2.0 * py), 1e-12);
}

TEST(WeightedAdapter, RefusalsNameTheProblem) {
  auto model = with_sources("cat");  // src0 (r 4), src2 (r 8)
  methods::WeightedCombination how;
  how.combination_type = "linear";
  EXPECT_NE(error_of([&] { model->add_weighted_adapter({"src0", "src2"}, {1, 1}, "x", how); }).find("one rank"),
            std::string::npos);
  how.combination_type = "ties";
  EXPECT_NE(error_of([&] { model->add_weighted_adapter({"src0", "src0"}, {1, 1}, "x", how); }).find("density"),
            std::string::npos);
  how.combination_type = "average";
  EXPECT_NE(error_of([&] { model->add_weighted_adapter({"src0", "src2"}, {1, 1}, "x", how); }).find("average"),
            std::string::npos);
  EXPECT_NE(error_of([&] { model->add_weighted_adapter({"src0"}, {1, 1}, "x", how); }).find("2 weights for 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { model->add_weighted_adapter({"src0"}, {1}, "src2", how); }).find("already exists"),
            std::string::npos);
  EXPECT_FALSE(model->has_adapter("x")) << "a refused combination adds nothing";
}

}  // namespace
}  // namespace peft::test
