// Mixed precision: a half-precision frozen base with float32 deltas and optimizer state, autocast,
// dynamic loss scaling, and the dtype of saved deltas.
#include <cmath>
#include <filesystem>

#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "core/torch_compat.h"
#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/nn/attention.h"
#include "peft/nn/module_dtype.h"
#include "peft/optim/grad_scaler.h"
#include "peft/peft_model.h"
#include "peft/train/run_config.h"
#include "peft/train/trainer.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {
namespace fs = std::filesystem;

std::shared_ptr<methods::MethodConfig> lora(const std::string& family) {
  return methods::parse_config({{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8},
                                {"task_type", is_classifier(family) ? "SEQ_CLS" : "CAUSAL_LM"}});
}

/// The LoRA gradients of one step on a `dtype` base (the same weights, rounded), deltas made equal.
std::vector<at::Tensor> lora_gradients(const std::string& family, c10::ScalarType dtype) {
  PeftModel model(tiny_model(family, dtype));
  model.add_adapter("default", *lora(family));
  {
    torch::NoGradGuard g;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
    for (auto& [name, t] : model.adapter_state_dict("default"))
      if (name.find("lora_") != std::string::npos) t.copy_(torch::randn(t.sizes(), gen) * 0.1);
  }
  model.eval();
  model.forward(tiny_batch(family)).loss.backward();
  std::vector<at::Tensor> grads;
  for (auto& [name, t] : model.adapter_state_dict("default"))
    if (name.find("lora_") != std::string::npos) {
      EXPECT_EQ(t.scalar_type(), torch::kFloat) << name;
      grads.push_back(t.grad().clone());
    }
  return grads;
}

TEST(MixedPrecision, Bf16BaseLoraGradientsMatchTheFloat32BaseWithinBf16Tolerance) {
  for (const auto& family : tiny_families()) {
    const auto full = lora_gradients(family, torch::kFloat), half = lora_gradients(family, torch::kBFloat16);
    ASSERT_EQ(full.size(), half.size());
    // bfloat16 keeps 8 significant bits (relative step 2^-8) of the base's weights and of what its
    // GEMMs round, through a two-block model. Norms, not the largest entry: how often a bf16 GEMM
    // rounds depends on the CPU (AVX-512 BF16 or not), and a near-zero gradient (a difference of
    // larger terms) moves by more of itself than of the delta's gradient as a whole.
    double total = 0.0;
    for (const auto& g : full) total += g.pow(2).sum().item<double>();
    total = std::sqrt(total);
    for (size_t i = 0; i < full.size(); ++i) {
      const double own = full[i].norm().item<double>(), error = (half[i] - full[i]).norm().item<double>();
      EXPECT_GT(own, 0.0) << family << " " << i;
      EXPECT_LE(error, 0.05 * total) << family << " tensor " << i << " against the whole gradient";
      EXPECT_LE(error, 0.25 * own) << family << " tensor " << i << " against itself";
    }
  }
}

TEST(MixedPrecision, DeltaDtypeOverridesTheFloat32Default) {
  PeftModel model(tiny_model("llama"));
  model.set_precision({torch::kBFloat16, std::nullopt});
  model.add_adapter("default", *lora("llama"));
  for (const auto& p : model.trainable_parameters()) EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
  auto loss = model.forward(tiny_batch("llama")).loss;
  loss.backward();
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
}

TEST(MixedPrecision, SavedDeltasAreFloat32UnlessSaveDtypeSaysOtherwise) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("peft_mp_save_{}", ::getpid());
  fs::remove_all(dir);
  PeftModel model(tiny_model("gpt2"));
  model.set_precision({torch::kBFloat16, std::nullopt});  // a bf16 delta...
  model.add_adapter("default", *lora("gpt2"));
  {
    torch::NoGradGuard g;
    for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * 0.1);
  }
  checkpoint::save_adapter(model, (dir / "f32").string());
  const safetensors::File f32((dir / "f32" / checkpoint::kWeightsFile).string());
  for (const auto& t : f32.tensors())
    EXPECT_EQ(t.dtype, safetensors::DType::F32) << t.name << ": half precisions are saved as float32";
  model.set_precision({torch::kBFloat16, torch::kBFloat16});
  checkpoint::save_adapter(model, (dir / "bf16").string());
  const safetensors::File bf16((dir / "bf16" / checkpoint::kWeightsFile).string());
  for (const auto& t : bf16.tensors()) EXPECT_EQ(t.dtype, safetensors::DType::BF16) << t.name;

  // ...loads into a float32 delta exactly (bf16 -> f32 -> f32).
  PeftModel reloaded(tiny_model("gpt2"));
  checkpoint::load_adapter(reloaded, (dir / "f32").string());
  auto saved = model.adapter_state_dict("default");
  for (auto& [name, t] : reloaded.adapter_state_dict("default")) {
    EXPECT_EQ(t.scalar_type(), torch::kFloat) << name;
    EXPECT_TRUE(bit_equal(t, saved.at(name).to(torch::kFloat))) << name;
  }
  fs::remove_all(dir);
}

TEST(GradScaler, OverflowSkipsAndBacksOffCleanStepsGrow) {
  optim::GradScalerOptions o;
  o.init_scale = 1024;
  o.growth_interval = 2;
  optim::GradScaler scaler(o);
  auto p = torch::ones({3}, torch::requires_grad());
  scaler.scale((p * 2).sum()).backward();
  EXPECT_TRUE(scaler.unscale({p}));
  EXPECT_TRUE(bit_equal(p.grad(), torch::full({3}, 2.0)));  // unscaled exactly (powers of two)
  scaler.update(false);
  EXPECT_EQ(scaler.current_scale(), 1024);
  scaler.update(false);
  EXPECT_EQ(scaler.current_scale(), 2048) << "grows after growth_interval clean steps";
  p.mutable_grad().fill_(std::numeric_limits<float>::infinity());
  EXPECT_FALSE(scaler.unscale({p}));
  scaler.update(true);
  EXPECT_EQ(scaler.current_scale(), 1024);
  EXPECT_EQ(scaler.state().growth_tracker, 0);
  EXPECT_NE(error_of([&] { scaler.load_state({-1.0, 0}); }).find("scale must be positive"), std::string::npos);
}

train::TrainerConfig scaled_config(const std::string& out) {
  train::TrainerConfig c;
  c.max_steps = 6;
  c.batch_size = 4;
  c.lr = 5e-3;
  c.progress = false;
  c.output_dir = out;
  c.loss_scaling = "dynamic";
  c.loss_scale_init = 1e40;  // beyond float32: the scaled gradients overflow until the scale backs off
  c.loss_scale_growth_interval = 3;
  return c;
}

TEST(Trainer, LossScalingSkipsOverflowingStepsBacksOffAndResumesItsScale) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("peft_mp_scaler_{}", ::getpid());
  fs::remove_all(dir);
  auto model = std::make_shared<PeftModel>(tiny_model("gpt2"));
  model->add_adapter("default", *lora("gpt2"));
  auto before = model->adapter_state_dict("default");
  for (auto& [k, t] : before) t = t.detach().clone();
  auto config = scaled_config(dir.string());
  config.max_steps = 1;
  {
    train::Trainer trainer(train::trainable_delta(*model), config, random_blocks(8));
    auto r = trainer.train();
    EXPECT_EQ(r.overflow_steps, 1);
    for (auto& [k, t] : model->adapter_state_dict("default")) EXPECT_TRUE(bit_equal(t, before.at(k))) << k;
  }
  auto state = core::read_json_file((dir / "state" / "trainer_state.json").string());
  EXPECT_EQ(state.at("loss_scale").get<double>(), 0.5e40);

  // Resumed, the scale goes on backing off from where it was until the steps are clean.
  config.max_steps = 12;
  train::Trainer resumed(train::trainable_delta(*model), config, random_blocks(8));
  resumed.resume((dir / "state").string());
  auto r = resumed.train();
  EXPECT_GE(r.overflow_steps, 1);
  EXPECT_LT(r.overflow_steps, 11);
  EXPECT_EQ(static_cast<int64_t>(r.losses.size()), 11 - r.overflow_steps);
  bool changed = false;
  for (auto& [k, t] : model->adapter_state_dict("default")) changed = changed || !bit_equal(t, before.at(k));
  EXPECT_TRUE(changed) << "clean steps update the delta";
  fs::remove_all(dir);
}

TEST(Trainer, Bf16AutocastOnCpuTrainsFloat32Deltas) {
  std::vector<double> first;
  for (const std::string precision : {"no", "bf16"}) {
    auto model = std::make_shared<PeftModel>(tiny_model("llama"));
    torch::manual_seed(1);
    model->add_adapter("default", *lora("llama"));
    auto config = scaled_config("");
    config.loss_scaling = "none";
    config.mixed_precision = precision;
    train::Trainer trainer(train::trainable_delta(*model), config, random_blocks(8));
    auto r = trainer.train();
    ASSERT_EQ(r.losses.size(), 6u);
    for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
    first.push_back(r.losses.front());
    for (const auto& p : model->trainable_parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat);
  }
  EXPECT_NEAR(first[1], first[0], 0.02 * first[0]) << "bf16 matmuls, float32 loss";
}

TEST(Trainer, MixedPrecisionSettingsAreChecked) {
  auto model = std::make_shared<PeftModel>(tiny_model("gpt2"));
  model->add_adapter("default", *lora("gpt2"));
  auto config = scaled_config("");
  config.mixed_precision = "fp16";
  EXPECT_NE(error_of([&] { train::Trainer(train::trainable_delta(*model), config, random_blocks(4)); })
                .find("autocasts on CUDA only"),
            std::string::npos);
  config.mixed_precision = "fp8";
  EXPECT_NE(error_of([&] { train::Trainer(train::trainable_delta(*model), config, random_blocks(4)); })
                .find("mixed_precision must be"),
            std::string::npos);
  EXPECT_NE(error_of([] { train::trainer_config_from_json({{"loss_scale_init", "big"}}, "run.json"); })
                .find("loss_scale_init"),
            std::string::npos);
}

}  // namespace
}  // namespace peft::test

namespace peft::test {
namespace {

TEST(CreateModelOn, DrawsCreateModelsWeightsOrTheSameDistributionInTheAskedDtype) {
  const auto config = tiny_config("llama");
  torch::manual_seed(4);
  auto host = models::create_model(config);
  torch::manual_seed(4);
  auto same = models::create_model_on(config, c10::Device(c10::kCPU), std::nullopt);
  auto expected = host->named_parameters();
  for (const auto& p : same->named_parameters()) EXPECT_TRUE(bit_equal(p.value(), expected[p.key()])) << p.key();
  auto half = models::create_model_on(config, c10::Device(c10::kCPU), torch::kBFloat16);
  for (const auto& p : half->named_parameters()) {
    const auto v = p.value().to(torch::kFloat);
    EXPECT_EQ(p.value().scalar_type(), torch::kBFloat16) << p.key();
    if (p.key().find("norm") != std::string::npos) {
      EXPECT_TRUE(bit_equal(v, torch::ones_like(v))) << p.key();
    } else {
      EXPECT_NEAR(v.std().item<double>(), 0.02, 0.004) << p.key();  // initializer_range
    }
  }
}

TEST(MixedPrecision, CheckpointingRecomputesUnderTheForwardsAutocast) {
  std::vector<at::Tensor> reference;
  for (const bool checkpointing : {false, true}) {
    PeftModel model(tiny_model("llama"));
    torch::manual_seed(5);
    model.add_adapter("default", *lora("llama"));
    {
      torch::NoGradGuard g;
      for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * 0.05);
    }
    model.train();
    model.set_gradient_checkpointing(checkpointing);
    core::set_autocast(c10::kCPU, true, torch::kBFloat16);
    auto loss = model.forward(tiny_batch("llama")).loss;
    core::set_autocast(c10::kCPU, false, torch::kBFloat16);
    core::clear_autocast_cache();
    loss.backward();  // outside autocast, as the trainer runs it
    std::vector<at::Tensor> grads;
    for (auto& p : model.trainable_parameters()) grads.push_back(p.grad().clone());
    if (!checkpointing) {
      reference = grads;
      continue;
    }
    for (size_t i = 0; i < grads.size(); ++i) EXPECT_TRUE(bit_equal(grads[i], reference[i])) << i;
  }
}

TEST(FusedAttention, MatchesTheEagerPathOnEveryFamily) {
  nn::AttentionOptions defaults;
  defaults.score_divisor = 2.0;  // head_dim 4
  if (!nn::fused_attention_applies(defaults, 4)) GTEST_SKIP() << "this LibTorch has no fused attention kernel";
  for (const auto& family : tiny_families()) {
    auto model = tiny_model(family);
    model->eval();
    nn::set_fused_attention(false);
    auto eager = model->forward(tiny_batch(family)).logits;
    nn::set_fused_attention(true);
    auto fused = model->forward(tiny_batch(family)).logits;
    EXPECT_LT(max_abs_diff(fused, eager), 1e-5) << family;
  }
}

TEST(MixedPrecision, Fp16AutocastWithLossScalingTrainsOnCuda_CUDA) {
  ASSERT_TRUE(torch::cuda::is_available());
  auto base = tiny_model("llama");
  base->to(torch::kCUDA);
  auto model = std::make_shared<PeftModel>(base);
  model->add_adapter("default", *lora("llama"));
  auto config = scaled_config("");
  config.device = c10::Device(c10::kCUDA);
  config.loss_scaling = "auto";
  config.loss_scale_init = 65536;
  config.mixed_precision = "fp16";
  train::Trainer trainer(train::trainable_delta(*model), config, random_blocks(8));
  auto r = trainer.train();
  EXPECT_EQ(static_cast<int64_t>(r.losses.size()) + r.overflow_steps, config.max_steps);
  for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
  for (const auto& p : model->trainable_parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat);
}

TEST(MixedPrecision, CheckpointedBf16StepMatchesOnCuda_CUDA) {
  ASSERT_TRUE(torch::cuda::is_available());
  std::vector<at::Tensor> reference;
  for (const bool checkpointing : {false, true}) {
    auto base = tiny_model("gpt2", torch::kFloat, 7, tiny_dropout("gpt2"));
    base->to(torch::kCUDA);
    nn::to_floating_dtype(*base, torch::kBFloat16);
    PeftModel model(base);
    torch::manual_seed(5);
    model.add_adapter("default", *lora("gpt2"));
    model.train();
    model.set_gradient_checkpointing(checkpointing);
    torch::manual_seed(21);
    model.forward(train::to_device(tiny_batch("gpt2"), c10::Device(c10::kCUDA))).loss.backward();
    std::vector<at::Tensor> grads;
    for (auto& p : model.trainable_parameters()) grads.push_back(p.grad().cpu().to(torch::kFloat));
    if (!checkpointing) {
      reference = grads;
      continue;
    }
    ASSERT_EQ(grads.size(), reference.size());
    for (size_t i = 0; i < grads.size(); ++i)
      EXPECT_LE(max_abs_diff(grads[i], reference[i]), 1e-6 + 1e-3 * reference[i].abs().max().item<double>()) << i;
  }
}

}  // namespace
}  // namespace peft::test
