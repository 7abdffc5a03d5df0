// S3PET beyond the conformance suite: the shifted sigmoid meets the budget exactly and carries
// the configured gradient; hard-concrete gates keep each module with probability p; the search
// moves α and returns a structure within the budget; random structures are seeded; searched
// norms are put back after every forward; structure entries are checked by name.
#include <torch/torch.h>

#include "methods/s3pet/s3pet_modules.h"
#include "peft/nn/layer_norm.h"
#include "peft/core/error.h"
#include "peft/methods/s3pet/s3pet.h"
#include "peft/peft_model.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

std::shared_ptr<methods::S3petConfig> s3pet(nlohmann::json extra = nlohmann::json::object()) {
  nlohmann::json j = {{"peft_type", "S3PET"}, {"task_type", "CAUSAL_LM"}, {"budget", 0.05}};
  j.update(extra);
  return std::dynamic_pointer_cast<methods::S3petConfig>(methods::parse_config(j));
}

methods::S3petController& controller(PeftModel& model, const std::string& adapter = "a") {
  return dynamic_cast<methods::S3petController&>(*model.side_network(adapter));
}

at::Tensor counts(const methods::S3petController& c) {
  std::vector<double> n;
  for (const auto& cand : c.candidates()) n.push_back(static_cast<double>(cand.params));
  return torch::tensor(n, torch::kDouble);
}

TEST(S3pet, ShiftMeetsTheBudget) {
  torch::manual_seed(1);
  at::Tensor alpha = torch::randn({40}, torch::kDouble) * 2, n = torch::randint(10, 1000, {40}, torch::kDouble);
  const double budget = 0.3 * n.sum().item<double>();
  for (double beta : {0.5, 1.0, 3.0}) {
    const double b = methods::solve_shift(alpha, n, budget, beta);
    EXPECT_NEAR((torch::sigmoid((alpha - b) / beta) * n).sum().item<double>(), budget, 1e-8 * budget);
  }
  // Everything fits: no constraint, every p ≈ 1.
  const double b = methods::solve_shift(alpha, n, 2 * n.sum().item<double>(), 1.0);
  EXPECT_GE(torch::sigmoid(alpha - b).min().item<double>(), 1 - 1e-12);
}

TEST(S3pet, ProbabilitiesKeepTheBudgetWithEitherGradient) {
  for (const std::string mode : {"detach", "implicit"}) {
    PeftModel model(tiny_model("gpt2", torch::kDouble));
    model.add_adapter("a", *s3pet({{"shift_gradient", mode}}));
    auto& c = controller(model);
    {
      torch::NoGradGuard g;
      c.arch_logits.copy_(torch::randn_like(c.arch_logits));
    }
    const at::Tensor n = counts(c);
    const double budget = static_cast<double>(methods::s3pet_budget(model, *s3pet()));
    at::Tensor p = c.probabilities();
    EXPECT_NEAR((p.detach() * n).sum().item<double>(), budget, 1e-6 * budget) << mode;
    if (mode == "implicit") {
      // The budget is a constant of α: its gradient vanishes, and each p_i's gradient is the true one.
      auto g = torch::autograd::grad({(p * n).sum()}, {c.arch_logits})[0];
      EXPECT_LT(g.abs().max().item<double>(), 1e-9);
      auto g0 = torch::autograd::grad({c.probabilities()[0]}, {c.arch_logits})[0];
      torch::NoGradGuard ng;
      for (int64_t j : {0, 3, 7}) {
        const double h = 1e-6, orig = c.arch_logits[j].item<double>();
        c.arch_logits[j].fill_(orig + h);
        const double up = c.probabilities()[0].item<double>();
        c.arch_logits[j].fill_(orig - h);
        const double down = c.probabilities()[0].item<double>();
        c.arch_logits[j].fill_(orig);
        EXPECT_NEAR(g0[j].item<double>(), (up - down) / (2 * h), 1e-7) << j;
      }
    } else {
      // S3Delta's shift_detach: p renormalized by its (constant) total, so Σ p has no gradient.
      auto g = torch::autograd::grad({p.sum()}, {c.arch_logits})[0];
      EXPECT_LT(g.abs().max().item<double>(), 1e-12);
    }
  }
}

TEST(S3pet, HardConcreteGatesKeepEachModuleWithProbabilityP) {
  PeftModel model(tiny_model("gpt2"));
  model.add_adapter("a", *s3pet());
  auto& c = controller(model);
  {
    torch::NoGradGuard g;
    c.arch_logits.copy_(torch::linspace(-3, 3, c.arch_logits.numel()));
  }
  at::Tensor p = c.probabilities().detach();
  model.train();
  ASSERT_TRUE(c.is_training());
  // The controller samples a fresh gate vector for every forward; P(z_i > 1/2) = p_i exactly.
  torch::NoGradGuard g;
  at::Tensor above = torch::zeros_like(p);
  const int samples = 4000;
  const auto batch = tiny_batch("gpt2");  // (it reseeds the generator: draw it once)
  for (int i = 0; i < samples; ++i) {
    c.prepare(batch);
    above += (c.gates() > 0.5).to(p.scalar_type());
  }
  EXPECT_LT((above / samples - p).abs().max().item<double>(), 0.03);
  model.eval();
  c.prepare(tiny_batch("gpt2"));
  EXPECT_TRUE(bit_equal(c.gates(), p.clamp(1e-6, 1 - 1e-6)));
}

/// Searches on a tiny `family` model and checks what every search gives: α moved, the ranking
/// ordered, a structure within the budget led by the most probable module, the base untouched,
/// and the structure retraining from scratch as the base. Returns the ranking.
std::vector<std::pair<methods::S3petCandidate, double>> search_and_check(const std::string& family, bool second_order) {
  auto base = tiny_model(family);
  std::map<std::string, at::Tensor> before;
  for (auto& p : base->named_parameters()) before[p.key()] = p.value().detach().clone();
  PeftModel model(base);
  nlohmann::json extra = {{"search", {{"steps", 4}, {"alpha_lr", 0.5}, {"second_order", second_order}, {"log_every", 0}}}};
  if (family == "t5") extra["task_type"] = "SEQ_2_SEQ_LM";
  auto cfg = s3pet(extra);
  model.add_adapter("a", *cfg);
  auto result = methods::s3pet_search(model, "a", [&] { return tiny_batch(family); }, [&] { return tiny_batch(family); });
  EXPECT_GT(controller(model).arch_logits.abs().max().item<double>(), 1e-3) << "α never moved";
  EXPECT_EQ(result.ranking.size(), controller(model).candidates().size());
  for (size_t i = 1; i < result.ranking.size(); ++i) EXPECT_GE(result.ranking[i - 1].second, result.ranking[i].second);
  int64_t used = 0;
  for (const auto& m : result.structure->structure) used += m.params;
  EXPECT_LE(used, methods::s3pet_budget(model, *cfg));
  EXPECT_FALSE(result.structure->structure.empty());
  if (!result.structure->structure.empty())
    EXPECT_EQ(result.structure->structure.front().module, result.ranking.front().first.module)
        << "the most probable module is kept first";
  model.delete_adapter("a");
  for (auto& p : base->named_parameters()) EXPECT_TRUE(bit_equal(p.value(), before.at(p.key()))) << p.key();
  // The structure retrains from scratch: a fresh, ungated adapter that starts as the base.
  base->eval();
  torch::NoGradGuard g;
  auto ref = base->forward(tiny_batch(family)).logits.clone();
  model.add_adapter("found", *result.structure);
  EXPECT_TRUE(bit_equal(model.forward(tiny_batch(family)).logits, ref));
  EXPECT_EQ(model.count_parameters().trainable, used);
  return result.ranking;
}

TEST(S3pet, SearchOnT5CoversBothStacksAndItsStructureStartsAsTheBase) {
  const auto ranking = search_and_check("t5", false);
  int64_t encoder = 0, decoder = 0, norms = 0;
  for (const auto& [candidate, p] : ranking) {
    encoder += candidate.module.rfind("encoder.", 0) == 0;
    decoder += candidate.module.rfind("decoder.", 0) == 0;
    norms += candidate.kind == "ln";
  }
  EXPECT_GT(encoder, 0);
  EXPECT_GT(decoder, 0);
  EXPECT_GT(norms, 0);
  // A structure naming a decoder block's cross-attention slot reads back from its JSON.
  PeftModel model(tiny_model("t5"));
  auto cross = s3pet({{"task_type", "SEQ_2_SEQ_LM"},
                      {"structure", {{{"kind", "adapter"}, {"module", "decoder.block.1"}, {"slot", "cross_attention"}}}}});
  auto reread = std::dynamic_pointer_cast<methods::S3petConfig>(methods::parse_config(cross->to_json()));
  ASSERT_TRUE(reread);
  model.add_adapter("cross", *reread);
  const auto& attached = dynamic_cast<const methods::S3petConfig&>(model.adapter_config("cross")).structure;
  ASSERT_EQ(attached.size(), 1u);
  EXPECT_EQ(attached.front().slot, "cross_attention");
  EXPECT_EQ(model.count_parameters().trainable, attached.front().params);
  EXPECT_EQ(attached.front().params, 2 * 24 * reread->adapter_size + reread->adapter_size + 24);  // d = 24
}

TEST(S3pet, SearchMovesAlphaAndReturnsAStructureWithinTheBudget) {
  for (bool second_order : {false, true}) search_and_check("gpt2", second_order);
}

TEST(S3pet, RandomStructuresAreSeededAndWithinTheBudget) {
  PeftModel model(tiny_model("llama"));
  auto a = methods::s3pet_random_structure(model, *s3pet({{"search", {{"seed", 3}}}}));
  auto b = methods::s3pet_random_structure(model, *s3pet({{"search", {{"seed", 3}}}}));
  auto c = methods::s3pet_random_structure(model, *s3pet({{"search", {{"seed", 4}}}}));
  EXPECT_EQ(a->to_json(), b->to_json());
  EXPECT_NE(a->to_json()["structure"], c->to_json()["structure"]);
  int64_t used = 0;
  for (const auto& m : a->structure) used += m.params;
  EXPECT_LE(used, methods::s3pet_budget(model, *a));
}

TEST(S3pet, SearchedNormsAreRestoredAfterEveryForward) {
  auto base = tiny_model("gpt2");
  PeftModel model(base);
  model.add_adapter("a", *s3pet({{"search_space", {"ln"}}}));
  {
    torch::NoGradGuard g;
    for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * 0.1);
  }
  auto params = base->named_parameters();
  auto& ln = *std::dynamic_pointer_cast<nn::LayerNormImpl>(base->named_modules()["transformer.h.0.ln_1"]);
  model.eval();
  torch::NoGradGuard g;
  auto with = model.forward(tiny_batch("gpt2")).logits.clone();
  EXPECT_TRUE(ln.weight.is_same(params["transformer.h.0.ln_1.weight"]));
  model.disable_adapters();
  auto bare = model.forward(tiny_batch("gpt2")).logits.clone();
  EXPECT_GT(max_abs_diff(with, bare), 1e-4) << "the LN deltas took part";
  model.enable_adapters();
  EXPECT_TRUE(bit_equal(model.forward(tiny_batch("gpt2")).logits, with));
  model.delete_adapter("a");
  EXPECT_TRUE(bit_equal(model.forward(tiny_batch("gpt2")).logits, bare));
}

TEST(S3pet, StructureEntriesAreCheckedByName) {
  PeftModel model(tiny_model("gpt2"));
  auto with = [&](nlohmann::json structure) {
    return error_of([&] { model.add_adapter("x", *s3pet({{"structure", structure}})); });
  };
  EXPECT_NE(with({{{"kind", "lora"}, {"module", "c_attn"}}}).find("matches 2 lora candidates"), std::string::npos);
  EXPECT_NE(with({{{"kind", "lora"}, {"module", "h.7.attn.c_attn"}}}).find("structure[0]: no lora candidate"),
            std::string::npos);
  EXPECT_NE(with({{{"kind", "bias"}, {"module", "h.0.mlp.c_fc"}}, {{"kind", "bias"}, {"module", "transformer.h.0.mlp.c_fc"}}})
                .find("structure[1] repeats bias"),
            std::string::npos);
  EXPECT_NE(with({{{"kind", "prefix"}, {"module", "h.0"}}}).find("kind must be one of"), std::string::npos);
  EXPECT_NE(with({{{"kind", "adapter"}, {"module", "h.0"}}}).find("slot"), std::string::npos);
  EXPECT_NE(error_of([] { s3pet({{"budget", 2.0}})->validate(); }).find("budget"), std::string::npos);
  EXPECT_NE(error_of([] { s3pet({{"search", {{"strategy", "evolution"}}}})->validate(); }).find("search.strategy"),
            std::string::npos);
  EXPECT_TRUE(model.adapters().empty());
}

}  // namespace
}  // namespace peft::test
