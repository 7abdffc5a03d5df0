// peft::generate: greedy equals the argmax loop, top-k = 1 and a tiny top-p are greedy at any
// temperature, sampling is reproducible from the seed and stays inside top-k, stop tokens end
// the text, the window slides past the model's positions, bad settings are named.
#include <set>

#include <torch/torch.h>

#include "peft/generate.h"
#include "peft/models/load.h"
#include "peft/methods/method.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace peft::test {
namespace {

PeftModel gpt2() { return PeftModel(models::load_pretrained(fixture("hf/models/gpt2"))); }

std::vector<int64_t> argmax_loop(PeftModel& model, std::vector<int64_t> ids, int64_t n, int64_t window) {
  torch::NoGradGuard g;
  model.eval();
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const auto w = std::min<int64_t>(window, static_cast<int64_t>(ids.size()));
    models::ModelInputs in;
    in.input_ids = torch::tensor(std::vector<int64_t>(ids.end() - w, ids.end()), torch::kLong).unsqueeze(0);
    ids.push_back(model.forward(in).logits[0][-1].argmax().item<int64_t>());
    out.push_back(ids.back());
  }
  return out;
}

/// `n` tokens (step · i) mod 50.
std::vector<int64_t> strided_prompt(int64_t n, int64_t step) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) out.push_back((step * i) % 50);
  return out;
}

TEST(Generate, GreedyEqualsTheArgmaxLoopWithAndWithoutADelta) {
  auto model = gpt2();
  const std::vector<int64_t> prompt = {3, 14, 15, 9, 2};
  GenerationConfig c;
  c.max_new_tokens = 7;
  auto r = generate(model, prompt, c);
  EXPECT_EQ(r.tokens, argmax_loop(model, prompt, 7, model.base_model().geometry().max_positions));
  EXPECT_EQ(r.stop_reason, "max_new_tokens");
  model.add_adapter("p", *methods::parse_config({{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}}));
  {
    torch::NoGradGuard g;
    for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p));
  }
  auto with = generate(model, prompt, c);
  EXPECT_EQ(with.tokens, argmax_loop(model, prompt, 7, model.base_model().geometry().max_positions - 3));
}

TEST(Generate, TopKOneAndTinyTopPAreGreedyAtAnyTemperature) {
  auto model = gpt2();
  const std::vector<int64_t> prompt = {5, 6, 7};
  GenerationConfig greedy;
  greedy.max_new_tokens = 6;
  const auto expected = generate(model, prompt, greedy).tokens;
  GenerationConfig k1 = greedy;
  k1.temperature = 5.0;
  k1.top_k = 1;
  EXPECT_EQ(generate(model, prompt, k1).tokens, expected);
  GenerationConfig p = greedy;
  p.temperature = 5.0;
  p.top_p = 1e-6;
  EXPECT_EQ(generate(model, prompt, p).tokens, expected);
}

TEST(Generate, SamplingIsSeededAndStaysInsideTopK) {
  auto model = gpt2();
  const std::vector<int64_t> prompt = {1, 2, 3, 4};
  GenerationConfig c;
  c.max_new_tokens = 12;
  c.temperature = 2.0;
  c.top_k = 3;
  torch::manual_seed(11);
  auto a = generate(model, prompt, c);
  torch::manual_seed(11);
  EXPECT_EQ(generate(model, prompt, c).tokens, a.tokens);
  // Each drawn token is among the 3 most likely after its context.
  model.eval();
  std::vector<int64_t> ids = prompt;
  torch::NoGradGuard g;
  std::set<int64_t> distinct;
  for (int64_t t : a.tokens) {
    models::ModelInputs in;
    in.input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0);
    auto top = std::get<1>(model.forward(in).logits[0][-1].topk(3));
    bool inside = false;
    for (int64_t i = 0; i < 3; ++i) inside = inside || top[i].item<int64_t>() == t;
    EXPECT_TRUE(inside) << t;
    distinct.insert(t);
    ids.push_back(t);
  }
  EXPECT_GT(distinct.size(), 1u) << "temperature 2 over 3 tokens should not always pick one";
}

TEST(Generate, StopTokensEndTheTextAndAreNotReturned) {
  auto model = gpt2();
  const std::vector<int64_t> prompt = {8, 9};
  GenerationConfig c;
  c.max_new_tokens = 6;
  const auto free_run = generate(model, prompt, c).tokens;
  ASSERT_EQ(free_run.size(), 6u);
  c.stop_tokens = {free_run[2]};
  auto r = generate(model, prompt, c);
  const auto first = std::find(free_run.begin(), free_run.end(), free_run[2]) - free_run.begin();
  EXPECT_EQ(r.tokens, std::vector<int64_t>(free_run.begin(), free_run.begin() + first));
  EXPECT_EQ(r.stop_reason, "stop_token");
}

TEST(Generate, TheWindowSlidesPastTheModelsPositions) {
  auto model = gpt2();
  const int64_t positions = model.base_model().geometry().max_positions;
  ASSERT_GT(positions, 0);
  const auto prompt = strided_prompt(positions + 3, 1);
  GenerationConfig c;
  c.max_new_tokens = 2;
  EXPECT_EQ(generate(model, prompt, c).tokens, argmax_loop(model, prompt, 2, positions));
}

TEST(Generate, TheCachedWindowSlidesOnceTheContextIsFull) {
  auto model = gpt2();
  const int64_t positions = model.base_model().geometry().max_positions;
  const auto prompt = strided_prompt(positions - 2, 7);
  GenerationConfig c;
  c.max_new_tokens = 5;  // two steps cached, three sliding
  EXPECT_EQ(generate(model, prompt, c).tokens, argmax_loop(model, prompt, 5, positions));
}

TEST(Generate, ABatchRowSlidesOnItsOwnWhileShorterRowsStayCached) {
  auto model = gpt2();
  const int64_t positions = model.base_model().geometry().max_positions;
  const std::vector<std::vector<int64_t>> prompts = {{7, 8}, strided_prompt(positions - 3, 5), {3}};
  GenerationConfig c;
  c.max_new_tokens = 8;  // the long row slides after 3; the short ones go past the long one's key count
  const auto batch = generate_batch(model, prompts, c);
  for (size_t r = 0; r < prompts.size(); ++r)
    EXPECT_EQ(batch[r].tokens, argmax_loop(model, prompts[r], 8, positions)) << r;
}

TEST(Generate, EachRowOfABatchStopsOnItsOwn) {
  auto model = gpt2();
  const std::vector<std::vector<int64_t>> prompts = {{8, 9}, {4, 30, 31, 2}, {17}};
  GenerationConfig c;
  c.max_new_tokens = 6;
  const auto free_run = generate(model, prompts[0], c).tokens;
  ASSERT_EQ(free_run.size(), 6u);
  c.stop_tokens = {free_run[2]};
  const auto batch = generate_batch(model, prompts, c);
  ASSERT_EQ(batch.size(), 3u);
  EXPECT_EQ(batch[0].stop_reason, "stop_token");
  EXPECT_LE(batch[0].tokens.size(), 2u);
  for (size_t r = 0; r < prompts.size(); ++r) {
    const auto alone = generate(model, prompts[r], c);
    EXPECT_EQ(batch[r].tokens, alone.tokens) << r;
    EXPECT_EQ(batch[r].stop_reason, alone.stop_reason) << r;
  }
}

TEST(Generate, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  auto model = gpt2();
  const std::vector<int64_t> prompt = {5, 6, 7, 5};
  GenerationConfig c;
  c.max_new_tokens = 1;
  c.repetition_penalty = 50.0;  // large enough to change the pick
  c.output_logits = true;
  const auto r = generate(model, prompt, c);
  at::Tensor logits = r.logits.at(0).clone();
  for (int64_t t : {5, 6, 7}) {
    const float v = logits[t].item<float>();
    logits[t] = v < 0 ? v * 50.0f : v / 50.0f;
  }
  EXPECT_EQ(r.tokens.at(0), logits.argmax().item<int64_t>());
  // Without the penalty the model repeats one of the prompt's tokens here, with it not.
  c.repetition_penalty = 1.0;
  const int64_t plain = generate(model, prompt, c).tokens.at(0);
  EXPECT_EQ(plain, r.logits.at(0).argmax().item<int64_t>());
}

TEST(Generate, ASeedMakesSamplingIndependentOfTheGlobalGenerator) {
  auto model = gpt2();
  GenerationConfig c;
  c.max_new_tokens = 10;
  c.temperature = 1.5;
  c.seed = 42;
  torch::manual_seed(1);
  const auto a = generate(model, {1, 2, 3}, c).tokens;
  torch::manual_seed(2);
  EXPECT_EQ(generate(model, {1, 2, 3}, c).tokens, a);
  c.use_cache = false;
  EXPECT_EQ(generate(model, {1, 2, 3}, c).tokens, a) << "the cache changes no draw";
  c.seed = 43;
  EXPECT_NE(generate(model, {1, 2, 3}, c).tokens, a);
}

TEST(Generate, BadSettingsAreNamed) {
  auto model = gpt2();
  GenerationConfig c;
  c.top_p = 0.0;
  EXPECT_NE(error_of([&] { generate(model, {1}, c); }).find("top_p"), std::string::npos);
  c = GenerationConfig();
  c.temperature = -1;
  EXPECT_NE(error_of([&] { generate(model, {1}, c); }).find("temperature"), std::string::npos);
  EXPECT_NE(error_of([&] { generate(model, {}, GenerationConfig()); }).find("prompt"), std::string::npos);
  c = GenerationConfig();
  c.repetition_penalty = 0;
  EXPECT_NE(error_of([&] { generate(model, {1}, c); }).find("repetition_penalty"), std::string::npos);
  c = GenerationConfig();
  c.pad_token = 1 << 30;
  EXPECT_NE(error_of([&] { generate(model, {1}, c); }).find("pad_token"), std::string::npos);
  EXPECT_NE(error_of([&] { generate_batch(model, {{1}, {}}, GenerationConfig()); }).find("prompt 1"), std::string::npos);
  PeftModel bert(models::load_pretrained(fixture("hf/models/bert")));
  EXPECT_NE(error_of([&] { generate(bert, {1, 2}, GenerationConfig()); }).find("causal LM"), std::string::npos)
      << error_of([&] { generate(bert, {1, 2}, GenerationConfig()); });
}

}  // namespace
}  // namespace peft::test

namespace peft::test {
namespace {

TEST(Geometry, MaxPositionsComeFromEachFamilysConfig) {
  for (const std::string family : {"gpt2", "bert", "llama", "vit"}) {
    auto model = models::load_pretrained(fixture("hf/models/" + family));
    const auto cfg = model->config_json();
    const int64_t expected =
        family == "gpt2" ? cfg["n_positions"].get<int64_t>()
        : family == "vit" ? (cfg["image_size"].get<int64_t>() / cfg["patch_size"].get<int64_t>()) *
                                    (cfg["image_size"].get<int64_t>() / cfg["patch_size"].get<int64_t>()) + 1
                          : cfg["max_position_embeddings"].get<int64_t>();
    EXPECT_EQ(model->geometry().max_positions, expected) << family;
    EXPECT_EQ(models::model_geometry(cfg).max_positions, expected) << family << " (from config.json alone)";
  }
}

}  // namespace
}  // namespace peft::test
