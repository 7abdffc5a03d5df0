// AdaMix: random routing while training, the expert average at evaluation, the consistency
// loss the trainer adds, and deployment as one adapter's worth of weights.
#include <filesystem>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "peft/methods/adamix.h"
#include "peft/methods/method.h"
#include "peft/peft_model.h"
#include "peft/train/trainer.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

TEST(AdaMix, RoutesRandomlyInTrainingAveragesAtEvalAndDeploysAsOneAdapter) {
  PeftModel model(tiny_model("bert"));
  model.add_adapter("mix", *methods::parse_config({{"peft_type", "ADAMIX"}, {"task_type", "SEQ_CLS"}, {"num_experts", 4},
                                                   {"bottleneck_size", 6}, {"sharing_up", false}}));
  {
    torch::NoGradGuard g;
    for (auto& [k, t] : model.adapter_state_dict("mix"))
      if (k.find(".adapters.") != std::string::npos) t.add_(torch::randn_like(t) * 0.3);
  }
  auto batch = tiny_batch("bert");
  torch::NoGradGuard g;
  model.train();
  torch::manual_seed(1);
  bool differed = false;
  auto first = model.forward(batch).logits.clone();
  for (int i = 0; i < 8 && !differed; ++i) differed = max_abs_diff(model.forward(batch).logits, first) > 1e-6;
  EXPECT_TRUE(differed) << "training passes take different experts";
  model.eval();
  auto averaged = model.forward(batch).logits.clone();
  EXPECT_TRUE(bit_equal(model.forward(batch).logits, averaged)) << "evaluation is deterministic";

  methods::adamix_deploy(model, "mix", "deployed");
  model.set_adapter("deployed");
  EXPECT_LT(max_abs_diff(model.forward(batch).logits, averaged), 1e-5);
  int64_t mix_size = 0, deployed_size = 0;
  for (auto& [k, t] : model.adapter_state_dict("mix"))
    if (k.find(".adapters.") != std::string::npos) mix_size += t.numel();
  for (auto& [k, t] : model.adapter_state_dict("deployed"))
    if (k.find(".adapters.") != std::string::npos) deployed_size += t.numel();
  EXPECT_EQ(mix_size, 4 * deployed_size);
}

TEST(AdaMix, TrainerAddsTheSymmetricKLConsistencyLoss) {
  EXPECT_NEAR(methods::symmetric_kl(torch::ones({2, 3}), torch::ones({2, 3})).item<double>(), 0.0, 1e-9);
  auto a = torch::tensor({{2.0, 0.0}}), b = torch::tensor({{0.0, 2.0}});
  const double p = 1.0 / (1.0 + std::exp(-2.0));  // softmax({2, 0})[0]
  const double kl = p * std::log(p / (1 - p)) + (1 - p) * std::log((1 - p) / p);
  EXPECT_NEAR(methods::symmetric_kl(a, b).item<double>(), kl, 1e-6);

  PeftModel model(tiny_model("bert"));
  model.add_adapter("mix", *methods::parse_config({{"peft_type", "ADAMIX"}, {"task_type", "SEQ_CLS"}, {"num_experts", 4},
                                                   {"bottleneck_size", 6}, {"sharing_up", false}, {"consistency_weight", 5.0}}));
  {
    torch::NoGradGuard g;
    for (auto& [k, t] : model.adapter_state_dict("mix"))
      if (k.find(".adapters.") != std::string::npos) t.add_(torch::randn_like(t) * 0.3);
  }
  auto target = train::trainable_delta(model);
  auto batch = tiny_batch("bert");
  model.eval();
  const double plain = target.forward(batch).loss.item<double>();
  EXPECT_NEAR(plain, model.forward(batch).loss.item<double>(), 1e-9) << "no extra term at evaluation";
  model.train();
  double extra = 0;
  for (int i = 0; i < 5; ++i) {
    torch::manual_seed(10 + i);
    const double with = target.forward(batch).loss.item<double>();
    torch::manual_seed(10 + i);
    const double ce = model.forward(batch).loss.item<double>();
    extra = std::max(extra, with - ce);
  }
  EXPECT_GT(extra, 0.0) << "two routes disagree, so the KL term is positive";
}

/// The same labelled tiny batch at every index (made once: tiny_batch seeds the generator).
class RepeatedBatch : public data::Dataset {
 public:
  int64_t size() const override { return 8; }
  models::ModelInputs batch(const std::vector<int64_t>&) const override { return batch_; }
  std::string describe() const override { return "one tiny batch"; }

 private:
  models::ModelInputs batch_ = tiny_batch("bert");
};

TEST(AdaMix, SavingTheDeltaLeavesTrainingRandomnessAlone) {
  // Exporting the expert average builds a one-expert adapter; that must not draw from the
  // generator that routes the experts: a run that saves best/ after every evaluation equals one
  // that never saves, bit for bit.
  auto losses = [](const std::string& out) {
    PeftModel model(tiny_model("bert"));
    model.add_adapter("default", *methods::parse_config({{"peft_type", "ADAMIX"}, {"num_experts", 4},
                                                         {"bottleneck_size", 6}, {"sharing_up", false}}));
    {
      torch::NoGradGuard g;  // experts that differ, so that the route shows in the loss
      auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
      for (auto& [k, t] : model.adapter_state_dict("default"))
        if (k.find(".adapters.") != std::string::npos) t.add_(torch::randn(t.sizes(), gen, t.options()) * 0.3);
    }
    train::TrainerConfig c;
    c.max_steps = 6;
    c.batch_size = 2;
    c.lr = 1e-2;
    c.eval_every = 1;
    c.eval_batches = 1;
    c.output_dir = out;
    c.progress = false;
    auto data = std::make_shared<RepeatedBatch>();
    torch::manual_seed(0);
    return train::Trainer(train::trainable_delta(model), c, data, data).train().losses;
  };
  TempDir dir;
  const auto saving = losses(dir.path());
  ASSERT_TRUE(std::filesystem::exists(dir.file("best/adapter_model.safetensors")));
  EXPECT_EQ(saving, losses(""));
}

}  // namespace
}  // namespace peft::test
