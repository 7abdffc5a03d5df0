// KAdaptation and FacT beyond the conformance suite: their updates equal the formulas written
// out term by term, the shared factors are shared (stored once), the zero-initialized factor
// still learns, and FacT's parameter counts on a ViT-B geometry equal the paper's formulas
// without building ViT-B.
#include <torch/torch.h>

#include "peft/methods/dsee/dsee.h"
#include "peft/methods/dsee/dsee_prune.h"
#include "peft/methods/fact.h"
#include "peft/methods/kadaptation.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

std::shared_ptr<methods::MethodConfig> config(nlohmann::json j) { return methods::parse_config(j); }

template <class Delta>
std::shared_ptr<Delta> delta_of(PeftModel& model, const std::string& layer) {
  for (auto& [name, lin] : model.linears())
    if (name == layer) return std::dynamic_pointer_cast<Delta>(lin->delta("default"));
  return nullptr;
}

TEST(KAdaptation, UpdateIsTheSumOfKroneckerProductsAndForwardAgrees) {
  PeftModel model(tiny_model("vit", torch::kDouble));
  model.add_adapter("default", *config({{"peft_type", "KADAPTATION"}, {"phm_dim", 4}, {"scaling", 3.0}}));
  torch::NoGradGuard g;
  for (auto& p : model.trainable_parameters()) p.normal_();
  auto d = delta_of<methods::KAdaptationDelta>(model, "vit.encoder.layer.1.attention.attention.value");
  ASSERT_TRUE(d);
  auto state = model.adapter_state_dict("default");
  const std::string rule = "base_model.model.vit.encoder.layer.0.attention.attention.value.rule.";
  at::Tensor left = state.at(rule + "left"), right = state.at(rule + "right");
  at::Tensor expected = torch::zeros({24, 24}, torch::kDouble);
  for (int64_t i = 0; i < 4; ++i)
    expected += torch::kron(torch::outer(left[i], right[i]), torch::outer(d->fast_u[i], d->fast_v[i]));
  EXPECT_LT(max_abs_diff(d->delta_weight(), expected * 3.0), 1e-12);
  // The factorized forward equals x ΔWᵀ + b.
  at::Tensor x = torch::randn({2, 5, 24}, torch::kDouble), y = torch::zeros({2, 5, 24}, torch::kDouble);
  EXPECT_LT(max_abs_diff(d->adapt_output(x, y), torch::matmul(x, (expected * 3.0).t()) + d->bias), 1e-10);
}

TEST(KAdaptation, RulesAreSharedPerKindAndStoredOnce) {
  PeftModel model(tiny_model("vit"));
  model.add_adapter("default", *config({{"peft_type", "KADAPTATION"}, {"phm_dim", 4}}));
  int rules = 0;
  for (auto& [key, t] : model.adapter_state_dict("default")) rules += key.find(".rule.left") != std::string::npos;
  EXPECT_EQ(rules, 2) << "one for the queries, one for the values";
  // 2 layers × 2 kinds × (u 24 + v 24 + bias 24), shared: 2 kinds × (left + right, 4×4 each).
  EXPECT_EQ(element_count(model.trainable_parameters()), 2 * 2 * 72 + 2 * 2 * 16);
}

TEST(KAdaptation, TheZeroFactorGetsAGradientAtInit) {
  // The public code zero-initializes both fast factors, so nothing but the bias learns; here
  // ΔW = 0 at init and v's gradient is non-zero at once.
  PeftModel model(tiny_model("vit"));
  model.add_adapter("default", *config({{"peft_type", "KADAPTATION"}, {"phm_dim", 4}}));
  auto d = delta_of<methods::KAdaptationDelta>(model, "vit.encoder.layer.0.attention.attention.query");
  EXPECT_EQ(d->delta_weight().abs().max().item<double>(), 0.0);
  model.forward(tiny_batch("vit")).loss.backward();
  EXPECT_GT(d->fast_v.grad().abs().max().item<double>(), 0.0);
}

TEST(FacT, SlicesFollowTheTensorizedFormulas) {
  for (const std::string variant : {"tt", "tk"}) {
    PeftModel model(tiny_model("gpt2", torch::kDouble));  // d = 32; c_attn is 3 slices, c_fc 4
    model.add_adapter("default", *config({{"peft_type", "FACT"}, {"variant", variant}, {"rank", 3}, {"scaling", 0.5}}));
    torch::NoGradGuard g;
    for (auto& p : model.trainable_parameters()) p.normal_();
    auto state = model.adapter_state_dict("default");
    const std::string shared = "base_model.model.transformer.h.0.attn.c_attn.shared.";
    at::Tensor u = state.at(shared + "u"), v = state.at(shared + "v");  // [r, d], [d, r]
    auto d = delta_of<methods::FacTDelta>(model, "transformer.h.1.mlp.c_fc");  // slices 16..19 of 24
    at::Tensor w = d->delta_weight();
    ASSERT_EQ(w.sizes(), c10::IntArrayRef({128, 32}));
    for (int64_t a = 0; a < 4; ++a) {
      at::Tensor sigma = variant == "tt" ? d->sigma[a][0]
                                         : torch::einsum("ijk,k->ij", {state.at(shared + "core"),
                                                                       state.at(shared + "factors").select(1, 16 + a)});
      EXPECT_LT(max_abs_diff(w.narrow(0, 32 * a, 32), torch::matmul(torch::matmul(v, sigma), u) * 0.5), 1e-12)
          << variant << " slice " << a;
    }
    at::Tensor x = torch::randn({3, 32}, torch::kDouble);
    EXPECT_LT(max_abs_diff(d->adapt_output(x, torch::zeros({3, 128}, torch::kDouble)), torch::matmul(x, w.t())), 1e-10);
  }
}

TEST(FacT, ViTBaseCountsEqualThePaperFormulasWithoutBuildingIt) {
  const auto g = models::model_geometry({{"model_type", "vit"}, {"hidden_size", 768}, {"num_hidden_layers", 12},
                                         {"num_attention_heads", 12}, {"intermediate_size", 3072}});
  EXPECT_EQ(methods::fact_default_slices(g), 144);  // 12 layers × (q, k, v, o + 4 + 4)
  const auto& fact = methods::find_method("fact");
  auto count = [&](const std::string& variant, int64_t r) {
    return fact.count(*config({{"peft_type", "FACT"}, {"variant", variant}, {"rank", r}}), g);
  };
  EXPECT_EQ(count("tt", 4), 8448);  // the "tiny" setting: 2dr + 144r²
  EXPECT_EQ(count("tt", 8), 21504);
  EXPECT_EQ(count("tt", 16), 61440);
  EXPECT_EQ(count("tk", 8), 13952);  // 2dr + r³ + 144r
  EXPECT_EQ(count("tk", 16), 30976);
  EXPECT_EQ(count("tk", 32), 86528);
}

TEST(FacT, ExplicitTargetsThatDoNotSliceAreNamed) {
  PeftModel model(tiny_model("llama"));  // k_proj is 8 × 24
  try {
    model.add_adapter("default", *config({{"peft_type", "FACT"}, {"target_modules", {"k_proj"}}}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.k_proj' is 8×24"), std::string::npos) << e.what();
  }
}

TEST(Dsee, GreBsmoFindsTheSparseSpikesThatMagnitudeMisses) {
  // W = a rank-3 matrix with large entries + 12 planted spikes smaller than its largest entries:
  // the top-|W| support misses spikes; the sparse part of a rank-3 decomposition finds every one.
  torch::manual_seed(5);
  at::Tensor low = torch::matmul(torch::randn({40, 3}), torch::randn({3, 30}));
  at::Tensor spikes = torch::zeros({40 * 30});
  at::Tensor planted = std::get<0>(torch::sort(torch::randperm(40 * 30).narrow(0, 0, 12)));
  spikes.index_put_({planted}, 2.5);
  at::Tensor w = low + spikes.view({40, 30});
  at::Tensor found = methods::top_support(methods::grebsmo_sparse_part(w, 20, 0.01, 3), 12);
  EXPECT_TRUE(torch::equal(found, planted)) << found << planted;
  EXPECT_FALSE(torch::equal(methods::top_support(w, 12), planted)) << "the test needs spikes magnitude alone misses";
}

TEST(Dsee, SparsePlusLowRankUpdateIsStoredCompactlyAndAppliedExactly) {
  PeftModel model(tiny_model("bert", torch::kDouble));
  model.add_adapter("default", *config({{"peft_type", "DSEE"}, {"r", 2}, {"lora_alpha", 8}, {"num_sparse", 16},
                                        {"grebsmo_iterations", 4}}));
  torch::NoGradGuard g;
  for (auto& p : model.trainable_parameters()) p.normal_();
  auto state = model.adapter_state_dict("default");
  const std::string layer = "base_model.model.bert.encoder.layer.0.attention.self.query.";
  EXPECT_EQ(state.at(layer + "sparse_indices").scalar_type(), torch::kLong);
  EXPECT_EQ(state.at(layer + "sparse_indices").numel(), 16);
  EXPECT_EQ(state.at(layer + "sparse_values").numel(), 16);
  auto d = delta_of<methods::DseeDelta>(model, "bert.encoder.layer.0.attention.self.query");
  at::Tensor dense = torch::zeros({24 * 24}, torch::kDouble).index_put({d->sparse_indices}, d->sparse_values);
  at::Tensor expected = (torch::mm(d->lora_B, d->lora_A) + dense.view({24, 24})) * 4.0;  // α/r = 8/2
  EXPECT_LT(max_abs_diff(d->delta_weight(), expected), 1e-12);
  at::Tensor x = torch::randn({2, 3, 24}, torch::kDouble);
  EXPECT_LT(max_abs_diff(d->adapt_output(x, torch::zeros({2, 3, 24}, torch::kDouble)), torch::matmul(x, expected.t())),
            1e-10);
}

class DseePrune : public ::testing::TestWithParam<std::string> {};

TEST_P(DseePrune, MasksStayThroughRetuningAndMergeYieldsTheSparseModel) {
  const auto family = GetParam();
  auto base = tiny_model(family);
  PeftModel model(base);
  model.add_adapter("default", *config({{"peft_type", "DSEE"}, {"r", 2}, {"num_sparse", 10}, {"grebsmo_iterations", 3},
                                        {"task_type", is_classifier(family) ? "SEQ_CLS" : "CAUSAL_LM"}}));
  {
    torch::NoGradGuard g;
    for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * 0.05);
  }
  methods::DseePruneOptions o;
  o.pruning_ratio = 0.3;
  o.heads_to_prune = 1;
  const auto report = methods::dsee_prune(model, "default", o);
  EXPECT_GE(report.zeroed, std::llround(0.3 * report.weights));
  EXPECT_EQ(report.heads_pruned, base->num_layers());
  EXPECT_EQ(report.macs_dense - report.macs_kept, report.zeroed);

  // Every pruned entry stays zero through re-tuning and in the merged weights.
  std::map<std::string, at::Tensor> zero;
  for (auto& [name, lin] : model.linears()) zero[name] = lin->weight_out_in().detach() == 0;
  model.eval();
  {
    torch::NoGradGuard g;
    auto unmerged = model.forward(tiny_batch(family)).logits;
    model.merge_adapter();
    EXPECT_LT(max_abs_diff(model.forward(tiny_batch(family)).logits, unmerged), 1e-5);
    model.unmerge_adapter();
  }
  torch::optim::AdamW opt(model.trainable_parameters(), torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    model.forward(tiny_batch(family)).loss.backward();
    opt.step();
  }
  auto merged = model.merge_and_unload();
  int64_t zeros = 0;
  for (auto& [name, lin] : merged->adaptable_linears()) {
    if (!zero.count(name) || !zero[name].any().item<bool>()) continue;  // heads and poolers are not pruned
    at::Tensor w = lin->weight_out_in();
    EXPECT_EQ(w.masked_select(zero[name]).abs().max().item<double>(), 0.0) << name;
    zeros += zero[name].sum().item<int64_t>();
  }
  EXPECT_GE(zeros, report.zeroed);
}

INSTANTIATE_TEST_SUITE_P(Families, DseePrune, ::testing::Values("gpt2", "bert", "llama", "vit"));

TEST(DseePrune, APrunedHeadContributesNothing) {
  // BERT-style: a pruned head's value rows and output columns are zero, so removing the head
  // outright (zeroing its output slice) changes nothing.
  auto base = tiny_model("vit");
  base->eval();
  PeftModel model(base);
  model.add_adapter("default", *config({{"peft_type", "DSEE"}, {"r", 2}, {"num_sparse", 10}, {"grebsmo_iterations", 3}}));
  methods::DseePruneOptions o;
  o.pruning_ratio = 0.0;
  o.heads_to_prune = 2;
  methods::dsee_prune(model, "default", o);
  torch::NoGradGuard g;
  for (auto& [name, lin] : model.linears()) {
    if (name.find("attention.attention.value") == std::string::npos) continue;
    int64_t dead = 0;
    for (int64_t h = 0; h < 3; ++h)
      dead += lin->weight_out_in().narrow(0, h * 8, 8).abs().sum().item<double>() == 0.0 &&
              lin->bias.narrow(0, h * 8, 8).abs().sum().item<double>() == 0.0;
    EXPECT_EQ(dead, 2) << name;
  }
}

}  // namespace
}  // namespace peft::test
