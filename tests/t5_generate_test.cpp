// Generation with an encoder-decoder: the prompt is the encoder's input; with the cache the
// encoder runs once and the decoder one token per step, which must give the tokens and logits of
// recomputing everything each step (an independent argmax loop over full forwards), row by row in
// a batch, with a delta, and in a mixed-adapter batch.
#include <torch/torch.h>

#include <fstream>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/data/seq2seq.h"
#include "peft/tokenizers/tokenizer.h"
#include "peft/train/generation_eval.h"
#include "peft/train/text_metrics.h"
#include "peft/generate.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/nn/kv_cache.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace peft::test {
namespace {

std::unique_ptr<PeftModel> t5_with_lora() {
  auto model = std::make_unique<PeftModel>(models::load_pretrained(fixture("hf/models/t5")));
  checkpoint::load_adapter(*model, fixture("hf/adapters/t5_lora/adapter"));
  return model;
}

const std::vector<std::vector<int64_t>> kPrompts = {{5, 17, 93, 41, 1}, {201, 8, 1}, {33, 77, 120, 9, 250, 64, 12, 1}};

/// Greedy decoding by full forwards: the whole decoder input every step, the encoder every step.
std::vector<int64_t> argmax_loop(PeftModel& model, const std::vector<int64_t>& prompt, int64_t steps) {
  torch::NoGradGuard g;
  model.eval();
  std::vector<int64_t> decoded = {*model.base_model().decoder_start_token()};
  for (int64_t s = 0; s < steps; ++s) {
    models::ModelInputs in;
    in.input_ids = torch::tensor(prompt, torch::kLong).unsqueeze(0);
    in.decoder_input_ids = torch::tensor(decoded, torch::kLong).unsqueeze(0);
    decoded.push_back(model.forward(in).logits[0][-1].argmax().item<int64_t>());
  }
  return {decoded.begin() + 1, decoded.end()};
}

TEST(T5Generate, GreedyEqualsTheFullForwardLoopWithAndWithoutTheCache) {
  auto model = t5_with_lora();
  GenerationConfig c;
  c.max_new_tokens = 9;
  for (bool cache : {true, false}) {
    c.use_cache = cache;
    for (const auto& p : kPrompts) {
      const auto r = generate(*model, p, c);
      EXPECT_EQ(r.tokens, argmax_loop(*model, p, 9)) << "cache " << cache;
      EXPECT_EQ(r.stop_reason, "max_new_tokens");
    }
  }
}

TEST(T5Generate, PromptAndPrefixDeltasDecodeTheSameCachedAndUncached) {
  for (const std::string name : {"t5_prompt", "t5_prefix"}) {
    PeftModel model(models::load_pretrained(fixture("hf/models/t5")));
    checkpoint::load_adapter(model, fixture("hf/adapters/" + name + "/adapter"));
    GenerationConfig c;
    c.max_new_tokens = 7;
    c.output_logits = true;
    const auto cached = generate_batch(model, kPrompts, c);
    c.use_cache = false;
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      const auto alone = generate(model, kPrompts[i], c);
      EXPECT_EQ(cached[i].tokens, alone.tokens) << name << " " << i;
      EXPECT_EQ(alone.tokens, argmax_loop(model, kPrompts[i], 7)) << name << " " << i;
      for (size_t t = 0; t < alone.logits.size(); ++t) EXPECT_LT(max_abs_diff(cached[i].logits[t], alone.logits[t]), 1e-5);
    }
  }
}

TEST(T5Generate, ACachedBatchEqualsEachPromptAloneUncachedTokensAndLogits) {
  auto model = t5_with_lora();
  GenerationConfig c;
  c.max_new_tokens = 8;
  c.output_logits = true;
  const auto batch = generate_batch(*model, kPrompts, c);
  c.use_cache = false;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    const auto alone = generate(*model, kPrompts[i], c);
    EXPECT_EQ(batch[i].tokens, alone.tokens) << i;
    ASSERT_EQ(batch[i].logits.size(), alone.logits.size());
    for (size_t t = 0; t < alone.logits.size(); ++t) EXPECT_LT(max_abs_diff(batch[i].logits[t], alone.logits[t]), 1e-5);
  }
}

TEST(T5Generate, RowsStopOnTheirOwnAndTheRestContinueAsIfAlone) {
  auto model = t5_with_lora();
  GenerationConfig c;
  c.max_new_tokens = 8;
  const auto free_run = generate_batch(*model, kPrompts, c);
  // A stop token that row 1 meets ends it at its first occurrence; the others go on as if alone.
  const auto& row1 = free_run[1].tokens;
  c.stop_tokens = {row1[2]};
  const auto stopped = generate_batch(*model, kPrompts, c);
  EXPECT_EQ(stopped[1].stop_reason, "stop_token");
  EXPECT_EQ(stopped[1].tokens, std::vector<int64_t>(row1.begin(), std::find(row1.begin(), row1.end(), row1[2])));
  c.use_cache = false;
  for (size_t i = 0; i < kPrompts.size(); ++i) EXPECT_EQ(stopped[i].tokens, generate(*model, kPrompts[i], c).tokens) << i;
}

TEST(T5Generate, AMixedAdapterBatchEqualsEachRowWithItsAdapterAlone) {
  auto model = t5_with_lora();
  model->add_adapter("b", *methods::parse_config({{"peft_type", "LORA"}, {"task_type", "SEQ_2_SEQ_LM"}, {"r", 2},
                                                  {"target_modules", {"q", "k", "v", "o", "wi", "wo"}}}));
  model->set_adapter("b");
  {
    torch::NoGradGuard g;
    for (auto& p : model->trainable_parameters()) p.normal_(0.0, 0.3);
  }
  model->set_adapter("default");
  GenerationConfig c;
  c.max_new_tokens = 6;
  c.adapter_names = {"default", PeftModel::kBaseAdapterName, "b"};
  const auto mixed = generate_batch(*model, kPrompts, c);
  c.adapter_names.clear();
  c.use_cache = false;
  std::vector<std::vector<int64_t>> alone;
  for (const std::string name : {"default", "", "b"}) {
    if (name.empty()) {
      model->disable_adapters();
    } else {
      model->enable_adapters();
      model->set_adapter(name);
    }
    alone.push_back(generate(*model, kPrompts[alone.size()], c).tokens);
  }
  model->enable_adapters();
  for (size_t i = 0; i < kPrompts.size(); ++i) EXPECT_EQ(mixed[i].tokens, alone[i]) << i;
  EXPECT_NE(alone[0], alone[2]);  // the two deltas decode differently
}

TEST(T5Generate, EncoderOutputsGivenBackSkipTheEncoderWithTheSameLogits) {
  auto model = t5_with_lora();
  torch::NoGradGuard g;
  model->eval();
  models::ModelInputs in;
  in.input_ids = torch::tensor(kPrompts[2], torch::kLong).unsqueeze(0);
  in.decoder_input_ids = torch::tensor(std::vector<int64_t>{0, 7, 9}, torch::kLong).unsqueeze(0);
  const auto full = model->forward(in);
  in.encoder_outputs = full.encoder_last_hidden_state;
  EXPECT_TRUE(bit_equal(model->forward(in).logits, full.logits));
  in.encoder_outputs = full.encoder_last_hidden_state.narrow(1, 0, 3);
  EXPECT_NE(error_of([&] { model->forward(in); }).find("encoder_outputs have shape"), std::string::npos);
}

TEST(T5Generate, TheCacheHoldsCrossAttentionKeysOnceAndRefusesJoiningADecodersRows) {
  nn::KVCache cache;
  int computed = 0;
  auto compute = [&] {
    ++computed;
    return std::make_pair(torch::randn({3, 2, 5, 4}), torch::randn({3, 2, 5, 4}));
  };
  const auto first = cache.cross_attention(0, compute);
  const auto again = cache.cross_attention(0, compute);
  EXPECT_EQ(computed, 1);
  EXPECT_TRUE(bit_equal(first.first, again.first));
  cache.select_rows(torch::tensor(std::vector<int64_t>{2, 0}, torch::kLong));
  const auto kept = cache.cross_attention(0, compute);
  EXPECT_EQ(computed, 1);
  EXPECT_TRUE(bit_equal(kept.first[0], first.first[2]));
  EXPECT_TRUE(bit_equal(kept.second[1], first.second[0]));
  EXPECT_GT(cache.bytes(), 0);
  nn::KVCache other;
  other.extend_key_mask({}, 1, 1, 1);
  other.append(0, torch::zeros({1, 2, 1, 4}), torch::zeros({1, 2, 1, 4}));
  EXPECT_NE(error_of([&] { cache.add_rows(other); }).find("encoder-decoder"), std::string::npos);
}

/// One prompt's first forward (encoder, start token) over a cache of its own.
std::shared_ptr<nn::KVCache> first_step(PeftModel& model, const std::vector<int64_t>& prompt) {
  models::ModelInputs in;
  in.kv_cache = std::make_shared<nn::KVCache>();
  in.input_ids = torch::tensor(prompt, torch::kLong).unsqueeze(0);
  in.decoder_input_ids = torch::zeros({1, 1}, torch::kLong);
  model.forward(in);
  return in.kv_cache;
}

/// Layer 0's cached cross-attention keys (a cache that has them computes nothing).
at::Tensor cross_keys(nn::KVCache& cache) {
  return cache.cross_attention(0, [] { return std::make_pair(at::Tensor(), at::Tensor()); }).first;
}

TEST(T5Generate, JoinedRowsPadTheShorterSourceMaskedAndDecodeWithoutTheEncoderAsAlone) {
  auto model = t5_with_lora();
  torch::NoGradGuard g;
  model->eval();
  const auto& short_prompt = kPrompts[1];  // 3 tokens
  const auto& long_prompt = kPrompts[2];   // 8 tokens
  auto joined = first_step(*model, long_prompt);
  joined->add_rows(*first_step(*model, short_prompt));
  EXPECT_EQ(cross_keys(*joined).size(0), 2);
  EXPECT_EQ(cross_keys(*joined).size(2), 8) << "the shorter source is padded to the longer";
  const at::Tensor mask = joined->cross_attention_mask({});
  ASSERT_TRUE(mask.defined());
  EXPECT_TRUE(torch::equal(mask.sum(1), torch::tensor(std::vector<int64_t>{8, 3})));
  // Each row's next step, decoder alone (no input_ids): the logits of that row's own cache.
  const std::vector<int64_t> next = {7, 9};
  models::ModelInputs step;
  step.kv_cache = joined;
  step.decoder_input_ids = torch::tensor(next, torch::kLong).unsqueeze(1);
  const at::Tensor together = model->forward(step).logits;
  for (int64_t r = 0; r < 2; ++r) {
    models::ModelInputs own;
    own.kv_cache = first_step(*model, r == 0 ? long_prompt : short_prompt);
    own.decoder_input_ids = torch::tensor(std::vector<int64_t>{next[static_cast<size_t>(r)]}, torch::kLong).unsqueeze(1);
    EXPECT_LT(max_abs_diff(together[r], model->forward(own).logits[0]), 1e-5) << "row " << r;
  }
  // The long row leaves: its source's padding goes with it.
  joined->select_rows(torch::tensor(std::vector<int64_t>{1}, torch::kLong));
  joined->drop_unattended_prefix();
  EXPECT_EQ(cross_keys(*joined).size(2), 3);
  EXPECT_FALSE(joined->cross_attention_mask({}).defined()) << "every remaining key attended";
  models::ModelInputs bare;
  bare.decoder_input_ids = torch::zeros({1, 1}, torch::kLong);
  EXPECT_NE(error_of([&] { model->forward(bare); }).find("input_ids"), std::string::npos)
      << "without a cache holding the encoder's keys, input_ids are needed";
}

TEST(T5Generate, SentinelsPastTheTokenizersVocabularyDecodeAsExtraIds) {
  auto tok = tokenizers::load_tokenizer(source("examples/models/tiny-gpt2-en"));
  const auto hello = tok->encode("Hello there", false);
  std::vector<int64_t> ids = hello;
  ids.push_back(tok->vocab_size() + 2);
  ids.insert(ids.end(), hello.begin(), hello.end());
  EXPECT_EQ(train::decode_generated(*tok, ids), tok->decode(hello) + "<extra_id_2>" + tok->decode(hello));
  EXPECT_EQ(train::decode_generated(*tok, hello), tok->decode(hello));
}

TEST(T5Generate, GenerationScoresAreTheMeanOfEachDecodedTargetsMetrics) {
  auto tok = tokenizers::load_tokenizer(source("examples/models/tiny-gpt2-en"));
  nlohmann::json config = core::read_json_file(fixture("hf/models/t5/config.json"));
  config["vocab_size"] = tok->vocab_size();
  torch::manual_seed(5);
  PeftModel model(models::create_model(config));
  TempDir dir;
  const std::string path = dir.file("d.jsonl");
  std::ofstream(path) << "{\"source\": \"a cat\", \"target\": \"the cat\"}\n{\"source\": \"two dogs ran\", \"target\": \"dogs\"}\n"
                         "{\"source\": \"so it goes\", \"target\": \"it goes on\"}\n";
  data::Seq2SeqOptions o;
  o.eos_id = tok->special().eos;
  data::Seq2SeqDataset d(path, tok, o);
  GenerationConfig c;
  c.max_new_tokens = 5;
  const auto scores = train::evaluate_generation(model, d, *tok, c, /*batch_size=*/2);
  EXPECT_EQ(scores.examples, 3);
  double rouge = 0, em = 0;
  c.stop_tokens = {*tok->special().eos};
  for (int64_t i = 0; i < d.size(); ++i) {
    const std::string text = tok->decode(generate(model, d.source_tokens(i), c).tokens);
    rouge += train::rouge_l(text, d.target(i)).f1;
    em += train::exact_match(text, d.target(i));
  }
  EXPECT_NEAR(scores.rouge_l, rouge / 3, 1e-12);
  EXPECT_NEAR(scores.exact_match, em / 3, 1e-12);
  EXPECT_EQ(train::evaluate_generation(model, d, *tok, c, 2, /*max_examples=*/1).examples, 1);
}

}  // namespace
}  // namespace peft::test
