// DP-SGD: the private gradient is the noised sum of clipped per-example gradients (each
// contribution's norm at most C, the noise of std σC with a fixed seed); the Trainer samples,
// noises and accounts: ε in every evaluation line, beside the saved delta, and the same after resume.
#include <cmath>
#include <filesystem>
#include <fstream>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "peft/methods/method.h"
#include "peft/peft_model.h"
#include "peft/privacy/private_gradient.h"
#include "peft/privacy/rdp_accountant.h"
#include "peft/train/run_config.h"
#include "peft/train/trainer.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

struct Delta {
  std::shared_ptr<PeftModel> model;
  train::Trainable target;
  std::vector<at::Tensor> params;
};

Delta lora_delta() {
  Delta d;
  d.model = std::make_shared<PeftModel>(tiny_model("gpt2"));
  d.model->add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"r", 4}, {"lora_dropout", 0.0}}));
  torch::manual_seed(4);
  {
    torch::NoGradGuard g;  // B away from zero: every tensor gets a gradient
    for (auto& p : d.model->trainable_parameters()) p.add_(torch::randn_like(p) * 0.1);
  }
  d.target = train::trainable_delta(*d.model);
  for (const auto& [name, p] : d.target.parameters()) d.params.push_back(p);
  d.target.set_training(true);
  return d;
}

/// Example i's own gradient, flat over every tensor, in float64.
at::Tensor example_gradient(Delta& d, const data::Dataset& data, int64_t i) {
  for (auto& p : d.params) p.mutable_grad().reset();
  d.target.forward(data.batch({i})).loss.backward();
  std::vector<at::Tensor> parts;
  for (auto& p : d.params) parts.push_back(p.grad().to(torch::kFloat64).reshape({-1}));
  return torch::cat(parts);
}

at::Tensor flat_grad(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> parts;
  for (const auto& p : params) parts.push_back(p.grad().to(torch::kFloat64).reshape({-1}));
  return torch::cat(parts);
}

TEST(DpSgd, ThePrivateGradientIsTheSumOfClippedPerExampleGradients) {
  auto data = random_blocks(6);
  auto d = lora_delta();
  const std::vector<int64_t> idx = {0, 2, 3, 5};
  std::vector<at::Tensor> each;
  for (int64_t i : idx) each.push_back(example_gradient(d, *data, i));
  const double between = [&] {  // a norm between the second and third largest: two clipped
    std::vector<double> n;
    for (const auto& g : each) n.push_back(g.norm().item<double>());
    std::sort(n.begin(), n.end());
    return (n[1] + n[2]) / 2;
  }();
  for (const auto how : {privacy::PerSampleMethod::kLoop, privacy::PerSampleMethod::kVectorized})
  for (const double clip : {1e6, between, 1e-3}) {  // none, some, all clipped
    at::Tensor expected = torch::zeros_like(each[0]);
    int64_t clipped = 0;
    for (const auto& g : each) {
      const double n = g.norm().item<double>();
      const double f = std::min(1.0, clip / (n + 1e-6));
      clipped += n > clip;
      EXPECT_LE((g * f).norm().item<double>(), clip * (1 + 1e-9)) << "each contribution's norm is at most C";
      expected += g * f;
    }
    expected /= 8.0;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
    privacy::PrivateGradientOptions o;
    o.clip_norm = clip;
    o.expected_batch = 8.0;
    o.method = how;
    o.max_physical_batch = 3;  // the batched pass in two chunks
    const auto r = privacy::private_gradient(d.target.forward, *data, idx, d.params, o, gen, c10::Device(c10::kCPU));
    EXPECT_EQ(r.examples, 4);
    EXPECT_EQ(r.vectorized, how == privacy::PerSampleMethod::kVectorized);
    EXPECT_EQ(r.clipped, clipped) << clip;
    ASSERT_EQ(r.norms.size(), 4u);
    for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(r.norms[i], each[i].norm().item<double>(), 1e-5 * each[i].norm().item<double>());
    EXPECT_LT((flat_grad(d.params) - expected).abs().max().item<double>(), 1e-6 * std::max(1.0, expected.abs().max().item<double>()))
        << "clip " << clip << " " << privacy::to_string(how);
  }
}

TEST(DpSgd, TheNoiseHasStdSigmaTimesCOverTheExpectedBatch) {
  auto data = random_blocks(4);
  auto d = lora_delta();
  const double sigma = 1.3, clip = 0.7, expected = 5.0;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(123);
  // No example sampled: the gradient is the noise alone.
  privacy::PrivateGradientOptions o;
  o.clip_norm = clip;
  o.noise_multiplier = sigma;
  o.expected_batch = expected;
  privacy::private_gradient(d.target.forward, *data, {}, d.params, o, gen, c10::Device(c10::kCPU));
  const at::Tensor g = flat_grad(d.params);
  const double n = static_cast<double>(g.numel());
  ASSERT_GT(n, 1000);
  const double target = sigma * clip / expected;
  // The sample std of n normal draws is within 5 standard errors (σ / sqrt(2n)) of the true one.
  EXPECT_NEAR(g.std().item<double>(), target, 5 * target / std::sqrt(2 * n));
  EXPECT_NEAR(g.mean().item<double>(), 0.0, 5 * target / std::sqrt(n));
}

TEST(DpSgd, AMethodWithoutPerSampleRulesFallsBackToTheLoopByName) {
  auto data = random_blocks(4);
  PeftModel model(tiny_model("gpt2"));
  model.add_adapter("default", *methods::parse_config({{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 3}}));
  auto target = train::trainable_delta(model);
  std::vector<at::Tensor> params;
  privacy::PrivateGradientOptions o;
  for (const auto& [name, p] : target.parameters()) {
    params.push_back(p);
    o.names.push_back(name);
  }
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const auto r = privacy::private_gradient(target.forward, *data, {0, 1, 3}, params, o, gen, c10::Device(c10::kCPU));
  EXPECT_FALSE(r.vectorized);
  EXPECT_EQ(r.examples, 3);
  EXPECT_NE(r.fallback.find("prompt_encoder.default.embedding.weight"), std::string::npos) << r.fallback;
  EXPECT_NE(r.fallback.find("no per-sample rule"), std::string::npos) << r.fallback;
  o.method = privacy::PerSampleMethod::kVectorized;
  const std::string error = error_of([&] { privacy::private_gradient(target.forward, *data, {0}, params, o, gen, c10::Device(c10::kCPU)); });
  EXPECT_NE(error.find("\"vectorized\""), std::string::npos) << error;
  EXPECT_NE(error.find("prompt_encoder.default.embedding.weight"), std::string::npos) << error;
}

TEST(DpSgd, AnUnrecordedUseOfATensorIsCaughtByTheSumCheck) {
  // A method's extra loss term on its own tensors is not per example: the batched pass must notice.
  auto data = random_blocks(4);
  auto d = lora_delta();
  auto forward = [&](const models::ModelInputs& in) {
    auto out = d.target.forward(in);
    out.loss = out.loss + d.params[0].pow(2).sum();
    return out;
  };
  privacy::PerSampleBatch ps(forward, data->batch({0, 1, 2}), d.params);
  EXPECT_FALSE(ps.ok());
  EXPECT_NE(ps.why().find("sum to"), std::string::npos) << ps.why();
}

train::TrainerConfig dp_config(const std::string& out) {
  train::TrainerConfig c;
  c.max_steps = 6;
  c.batch_size = 4;
  c.lr = 1e-2;
  c.eval_every = 3;
  c.output_dir = out;
  c.progress = false;
  privacy::DpSgdConfig p;
  p.noise_multiplier = 1.1;
  p.max_grad_norm = 0.5;
  p.delta = 1e-5;
  p.noise_seed = 99;
  c.privacy = p;
  return c;
}

TEST(DpSgd, TheTrainerAccountsAndResumesWithTheSameEpsilon) {
  auto data = random_blocks(16);
  TempDir dir;
  auto d = lora_delta();
  auto r = train::Trainer(d.target, dp_config(dir.path()), data, data).train();
  ASSERT_TRUE(r.epsilon.has_value());
  const double q = 4.0 / 16.0;
  EXPECT_DOUBLE_EQ(*r.epsilon, privacy::epsilon_for(1.1, q, 6, 1e-5).epsilon);
  std::ifstream log(dir.file("log.jsonl"));
  int evals = 0;
  for (std::string line; std::getline(log, line);)
    if (line.find("\"eval\"") != std::string::npos) {
      ++evals;
      EXPECT_NE(line.find("\"epsilon\""), std::string::npos) << line;
    }
  EXPECT_EQ(evals, 2);
  const auto meta = nlohmann::json::parse(std::ifstream(dir.file("final/privacy.json")));
  EXPECT_DOUBLE_EQ(meta["epsilon"].get<double>(), *r.epsilon);
  EXPECT_EQ(meta["steps"], 6);
  EXPECT_TRUE(std::filesystem::exists(dir.file("best/privacy.json")));
  // Stopped at step 3 and resumed: the same ε, the same delta (noise_seed makes the draws repeat).
  TempDir part;
  auto f = lora_delta();
  auto stop = dp_config(part.path());
  stop.max_steps = 3;
  stop.warmup_steps = 0;
  stop.schedule = "constant";
  train::Trainer(f.target, stop, data, data).train();
  auto g = lora_delta();
  auto cont = dp_config(part.path());
  cont.schedule = "constant";
  train::Trainer resumed(g.target, cont, data, data);
  resumed.resume(part.file("state"));
  const auto rest = resumed.train();
  EXPECT_DOUBLE_EQ(*rest.epsilon, privacy::epsilon_for(1.1, q, 6, 1e-5).epsilon) << "the accountant's history resumes";
  auto h = lora_delta();
  auto whole = dp_config("");
  whole.schedule = "constant";
  train::Trainer(h.target, whole, data, data).train();
  auto got = g.model->adapter_state_dict("default"), want = h.model->adapter_state_dict("default");
  for (auto& [k, t] : want) EXPECT_LT(max_abs_diff(got.at(k), t), 1e-6) << k;
}

TEST(DpSgd, TargetEpsilonAndRefusals) {
  auto data = random_blocks(16);
  auto d = lora_delta();
  auto c = dp_config("");
  c.privacy->noise_multiplier.reset();
  c.privacy->target_epsilon = 3.0;
  c.eval_every = 0;
  const auto r = train::Trainer(d.target, c, data).train();
  EXPECT_LE(*r.epsilon, 3.0);
  EXPECT_GE(*r.epsilon, 0.99 * 3.0);
  auto bad = [&](auto change) {
    auto cfg = dp_config("");
    change(cfg);
    auto e = lora_delta();
    return error_of([&] { train::Trainer(e.target, cfg, data); });
  };
  EXPECT_NE(bad([](auto& x) { x.grad_accum = 2; }).find("grad_accum"), std::string::npos);
  EXPECT_NE(bad([](auto& x) { x.privacy->target_epsilon = 2.0; }).find("one of them"), std::string::npos);
  EXPECT_NE(bad([](auto& x) { x.batch_size = 64; }).find("exceeds"), std::string::npos);
  EXPECT_NE(bad([](auto& x) { x.privacy->sampling = "bogus"; }).find("sampling"), std::string::npos);
  EXPECT_NE(bad([](auto& x) { x.privacy->max_grad_norm = 0; }).find("max_grad_norm"), std::string::npos);
  // The run config's "privacy" object.
  EXPECT_NE(error_of([] { train::privacy_config_from_json({{"target_epsilon", 8}, {"epsilon", 1}}, "run.json privacy"); })
                .find("epsilon"),
            std::string::npos);
  const auto p = train::privacy_config_from_json({{"target_epsilon", 8}, {"delta", 1e-5}, {"max_grad_norm", 1.0}}, "w");
  EXPECT_EQ(*p.target_epsilon, 8);
  EXPECT_FALSE(p.noise_seed.has_value()) << "noise from the system's entropy unless asked";
}

}  // namespace
}  // namespace peft::test
