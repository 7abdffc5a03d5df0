// ContinuousBatcher: requests for different deltas decoded together, each as if alone.
#include <atomic>

#include <torch/torch.h>

#include "peft/generate.h"
#include "peft/methods/method.h"
#include "peft/peft_model.h"
#include "peft/serve/continuous_batcher.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

/// Tiny GPT-2 / LLaMA / T5 with two LoRA deltas and a prefix-tuning delta, each perturbed.
std::unique_ptr<PeftModel> served(const std::string& family) {
  auto model = std::make_unique<PeftModel>(tiny_model(family));
  const std::vector<std::pair<std::string, nlohmann::json>> deltas = {
      {"x", {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}}},
      {"y", {{"peft_type", "LORA"}, {"r", 2}, {"lora_alpha", 2}}},
      {"p", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 3}}}};
  torch::manual_seed(21);
  for (const auto& [name, cfg] : deltas) {
    model->add_adapter(name, *methods::parse_config(cfg));
    model->set_adapter(name);
    torch::NoGradGuard g;
    for (auto& t : model->trainable_parameters()) t.add_(torch::randn_like(t) * 0.3);
  }
  model->eval();
  return model;
}

struct Case {
  std::vector<int64_t> prompt;
  std::string adapter;
  GenerationConfig config;
};

GenerationResult alone(PeftModel& model, const Case& c) {
  if (c.adapter.empty() || c.adapter == "__base__") {
    model.disable_adapters();
  } else {
    model.enable_adapters();
    model.set_adapter(c.adapter);
  }
  auto r = generate(model, c.prompt, c.config);
  model.enable_adapters();
  return r;
}

std::vector<Case> cases() {
  GenerationConfig greedy;
  greedy.max_new_tokens = 6;
  greedy.output_logits = true;
  GenerationConfig sampled = greedy;
  sampled.temperature = 0.9;
  sampled.top_k = 20;
  sampled.seed = 77;
  GenerationConfig short_one = greedy;
  short_one.max_new_tokens = 2;
  return {{{3, 17, 42, 8, 25}, "x", greedy},     {{9}, "y", greedy},          {{11, 12, 13}, "", greedy},
          {{5, 6, 7, 8}, "p", greedy},           {{4, 40, 2}, "x", sampled},  {{30, 31}, "__base__", short_one},
          {{1, 2, 3, 4, 5, 6, 7}, "y", short_one}};
}

/// Holds the batcher's thread until release(), so that every request queued meanwhile shares its
/// decoding steps.
class Hold {
 public:
  explicit Hold(serve::ContinuousBatcher& batcher)
      : gate_(release_.get_future().share()), held_(batcher.exclusive([gate = gate_](PeftModel&, const auto&) { gate.wait(); })) {}
  void release() {
    release_.set_value();
    held_.get();
  }

 private:
  std::promise<void> release_;
  std::shared_future<void> gate_;
  std::future<void> held_;
};

class Batcher : public ::testing::TestWithParam<std::string> {};

TEST_P(Batcher, ConcurrentRequestsForDifferentDeltasEachEqualTheirSingleResult) {
  auto model = served(GetParam());
  const auto all = cases();
  std::vector<GenerationResult> expected;
  for (const auto& c : all) expected.push_back(alone(*model, c));
  serve::ContinuousBatcher batcher(*model, /*max_batch=*/4);
  Hold hold(batcher);
  std::vector<std::vector<int64_t>> streamed(all.size());
  std::vector<std::future<GenerationResult>> futures;
  for (size_t i = 0; i < all.size(); ++i) {
    serve::Completion c{all[i].prompt, all[i].config, all[i].adapter, [&streamed, i](int64_t t) {
                                streamed[i].push_back(t);
                                return true;
                              }};
    futures.push_back(batcher.submit(std::move(c)));
  }
  hold.release();
  for (size_t i = 0; i < all.size(); ++i) {
    const auto got = futures[i].get();
    EXPECT_EQ(got.tokens, expected[i].tokens) << "request " << i << " (" << all[i].adapter << ")";
    EXPECT_EQ(got.stop_reason, expected[i].stop_reason) << i;
    ASSERT_EQ(got.logits.size(), expected[i].logits.size()) << i;
    for (size_t s = 0; s < got.logits.size(); ++s)
      EXPECT_LT(max_abs_diff(got.logits[s], expected[i].logits[s]), 1e-5) << "request " << i << " step " << s;
    EXPECT_EQ(streamed[i], got.tokens) << "streamed tokens are the result's";
  }
  const auto stats = batcher.stats();
  EXPECT_EQ(stats.completed, static_cast<int64_t>(all.size()));
  EXPECT_EQ(stats.largest_batch, 4) << "requests decoded together, up to max_batch";
  EXPECT_EQ(stats.failed, 0);
}

TEST_P(Batcher, UnderSteadyLoadTheCacheStaysAsShortAsTheLongestRequest) {
  auto model = served(GetParam());
  // 24 requests through 3 rows: some row always runs, so the cache is never emptied in between.
  std::vector<Case> all;
  const std::vector<std::string> adapters = {"x", "y", "", "p"};
  int64_t longest = 0;
  for (int64_t i = 0; i < 24; ++i) {
    Case c;
    for (int64_t t = 0; t <= i % 7; ++t) c.prompt.push_back(3 + (5 * i + t) % 40);
    c.adapter = adapters[i % adapters.size()];
    c.config.max_new_tokens = 2 + i % 5;
    const int64_t prefix = c.adapter == "p" ? 3 : 0;
    longest = std::max<int64_t>(longest, prefix + static_cast<int64_t>(c.prompt.size()) + c.config.max_new_tokens);
    all.push_back(c);
  }
  std::vector<GenerationResult> expected;
  for (const auto& c : all) expected.push_back(alone(*model, c));
  serve::ContinuousBatcher batcher(*model, /*max_batch=*/3);
  Hold hold(batcher);
  std::vector<std::future<GenerationResult>> futures;
  for (const auto& c : all) futures.push_back(batcher.submit({c.prompt, c.config, c.adapter, {}}));
  hold.release();
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(futures[i].get().tokens, expected[i].tokens) << "request " << i;
  const auto stats = batcher.stats();
  EXPECT_GT(stats.largest_cache_positions, 0);
  EXPECT_LE(stats.largest_cache_positions, longest) << "the padding of rows that left is dropped";
  EXPECT_EQ(stats.cache_positions, 0) << "nothing runs, nothing is cached";
}

// T5: the prompt is the encoder's input; rows of other source lengths join, padded and masked.
INSTANTIATE_TEST_SUITE_P(Families, Batcher, ::testing::Values("gpt2", "llama", "t5"));

TEST(BatcherErrors, BadRequestsAreRefusedAndTheBatcherGoesOn) {
  auto model = served("gpt2");
  serve::ContinuousBatcher batcher(*model, 2);
  GenerationConfig c;
  c.max_new_tokens = 3;
  EXPECT_NE(error_of([&] { batcher.submit({{1, 2}, c, "nope", {}}); }).find("adapter"), std::string::npos);
  EXPECT_NE(error_of([&] { batcher.submit({{}, c, "x", {}}); }).find("prompt"), std::string::npos);
  EXPECT_NE(error_of([&] { batcher.submit({{1, 999}, c, "x", {}}); }).find("vocabulary"), std::string::npos);
  GenerationConfig huge = c;
  huge.max_new_tokens = 1000;
  EXPECT_NE(error_of([&] { batcher.submit({{1, 2}, huge, "x", {}}); }).find("max_tokens"), std::string::npos);
  GenerationConfig negative = c;
  negative.max_new_tokens = -1;
  EXPECT_NE(error_of([&] { batcher.submit({{1, 2}, negative, "x", {}}); }).find("max_new_tokens"), std::string::npos);
  // Unloading a delta between requests; a request for it afterwards is refused.
  batcher.exclusive([](PeftModel& m, const auto& in_use) {
    EXPECT_FALSE(in_use("y"));
    m.delete_adapter("y");
  }).get();
  EXPECT_NE(error_of([&] { batcher.submit({{1, 2}, c, "y", {}}); }).find("'y'"), std::string::npos);
  EXPECT_EQ(batcher.submit({{1, 2}, c, "x", {}}).get().tokens.size(), 3u) << "still serving";
  batcher.shutdown();
  EXPECT_NE(error_of([&] { batcher.submit({{1, 2}, c, "x", {}}); }).find("shutting down"), std::string::npos);
}

}  // namespace
}  // namespace peft::test
