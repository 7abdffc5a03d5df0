// The key/value cache: a forward over a prompt and then one over each further token give the
// logits of one forward over everything (GPT-2 and LLaMA, with padding); rows can be dropped;
// misuse is named.
#include <torch/torch.h>

#include "peft/models/load.h"
#include "peft/nn/kv_cache.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

TEST(KVCache, StepByStepEqualsOneForwardOverTheWholeSequence) {
  for (const std::string family : {"gpt2", "llama"}) {
    auto model = tiny_model(family);
    model->eval();
    torch::NoGradGuard g;
    const at::Tensor ids = torch::tensor({{0, 0, 5, 9, 14, 3, 22, 7}, {4, 8, 15, 16, 23, 42, 1, 2}}, torch::kLong);
    const at::Tensor mask = torch::tensor({{0, 0, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1, 1}}, torch::kLong);
    const at::Tensor positions = (mask.cumsum(1) - 1).clamp_min(0);
    models::ModelInputs whole;
    whole.input_ids = ids;
    whole.attention_mask = mask;
    whole.position_ids = positions;
    const at::Tensor expected = model->forward(whole).logits;

    auto cache = std::make_shared<nn::KVCache>();
    models::ModelInputs in;
    in.kv_cache = cache;
    in.input_ids = ids.narrow(1, 0, 5);
    in.attention_mask = mask.narrow(1, 0, 5);
    in.position_ids = positions.narrow(1, 0, 5);
    std::vector<at::Tensor> parts = {model->forward(in).logits};
    EXPECT_EQ(cache->length(), 5);
    for (int64_t t = 5; t < 8; ++t) {
      in.input_ids = ids.narrow(1, t, 1);
      in.attention_mask = at::Tensor();  // the cache keeps the padding of the earlier keys
      in.position_ids = positions.narrow(1, t, 1);
      parts.push_back(model->forward(in).logits);
    }
    EXPECT_EQ(cache->length(), 8);
    EXPECT_EQ(cache->batch(), 2);
    const at::Tensor stepped = torch::cat(parts, 1);
    // Padded query rows see nothing real either way; compare the real positions.
    EXPECT_LT(max_abs_diff(stepped.narrow(1, 2, 6), expected.narrow(1, 2, 6)), 1e-5) << family;
    EXPECT_LT(max_abs_diff(stepped[1], expected[1]), 1e-5) << family;
    EXPECT_GT(cache->bytes(), 0);
  }
}

TEST(KVCache, SelectedRowsContinueAsIfAlone) {
  auto model = tiny_model("llama");
  model->eval();
  torch::NoGradGuard g;
  const at::Tensor ids = torch::tensor({{5, 9, 14, 3}, {4, 8, 15, 16}, {1, 2, 3, 4}}, torch::kLong);
  auto cache = std::make_shared<nn::KVCache>();
  models::ModelInputs in;
  in.kv_cache = cache;
  in.input_ids = ids.narrow(1, 0, 3);
  model->forward(in);
  cache->select_rows(torch::tensor({2, 0}, torch::kLong));
  in.input_ids = torch::tensor({{4}, {3}}, torch::kLong);
  const at::Tensor next = model->forward(in).logits;
  models::ModelInputs whole;
  whole.input_ids = torch::stack({ids[2], ids[0]});
  EXPECT_LT(max_abs_diff(next.select(1, 0), model->forward(whole).logits.select(1, 3)), 1e-5);
}

TEST(KVCache, JoinedRowsLeaveAndTheirPaddingIsDropped) {
  for (const std::string family : {"gpt2", "llama"}) {
    auto model = tiny_model(family);
    model->eval();
    torch::NoGradGuard g;
    const std::vector<int64_t> long_row = {5, 9, 14, 3, 22, 7}, short_row = {4, 8};
    auto prompt = [&](const std::vector<int64_t>& ids) {  // a row's prompt in a cache of its own
      auto cache = std::make_shared<nn::KVCache>();
      models::ModelInputs in;
      in.kv_cache = cache;
      in.input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0);
      model->forward(in);
      return cache;
    };
    auto cache = prompt(long_row);
    cache->add_rows(*prompt(short_row));  // the short row joins, left-padded to 6 positions
    EXPECT_EQ(cache->length(), 6);
    EXPECT_EQ(cache->batch(), 2);
    cache->select_rows(torch::tensor({1}, torch::kLong));  // the long row leaves
    EXPECT_EQ(cache->drop_unattended_prefix(), 4) << family;
    EXPECT_EQ(cache->length(), 2);
    EXPECT_EQ(cache->drop_unattended_prefix(), 0) << "nothing left to drop";
    models::ModelInputs in;
    in.kv_cache = cache;
    in.input_ids = torch::tensor({{15}}, torch::kLong);
    in.position_ids = torch::tensor({{2}}, torch::kLong);
    const at::Tensor next = model->forward(in).logits;
    models::ModelInputs whole;
    whole.input_ids = torch::tensor({4, 8, 15}, torch::kLong).unsqueeze(0);
    EXPECT_LT(max_abs_diff(next.select(1, 0), model->forward(whole).logits.select(1, 2)), 1e-5) << family;
    // With both rows kept nothing is attended by neither, so nothing goes.
    auto both = prompt(long_row);
    both->add_rows(*prompt(short_row));
    EXPECT_EQ(both->drop_unattended_prefix(), 0);
    EXPECT_EQ(both->length(), 6);
  }
}

TEST(KVCache, MisuseIsNamed) {
  auto model = tiny_model("gpt2");
  model->eval();
  torch::NoGradGuard g;
  auto cache = std::make_shared<nn::KVCache>();
  models::ModelInputs in;
  in.kv_cache = cache;
  in.input_ids = torch::tensor({{1, 2, 3}}, torch::kLong);
  model->forward(in);
  in.input_ids = torch::tensor({{1}, {2}}, torch::kLong);
  EXPECT_NE(error_of([&] { model->forward(in); }).find("the cache holds 1 rows"), std::string::npos);
  in.input_ids = torch::tensor({{1}}, torch::kLong);
  in.prompt_embeds = torch::zeros({1, 2, model->hidden_size()});
  EXPECT_NE(error_of([&] { model->forward(in); }).find("first forward only"), std::string::npos);
  auto bert = tiny_model("bert");
  models::ModelInputs b;
  b.input_ids = torch::tensor({{1, 2}}, torch::kLong);
  b.kv_cache = std::make_shared<nn::KVCache>();
  EXPECT_NE(error_of([&] { bert->forward(b); }).find("causal LM"), std::string::npos);
}

TEST(KVCache, IsRefusedUnderGradientCheckpointing) {
  auto llama = tiny_model("llama");
  for (auto& p : llama->parameters()) p.requires_grad_(true);
  llama->set_gradient_checkpointing(true);
  llama->train();
  models::ModelInputs l;
  l.input_ids = torch::tensor({{1, 2}}, torch::kLong);
  l.kv_cache = std::make_shared<nn::KVCache>();
  EXPECT_NE(error_of([&] { llama->forward(l); }).find("gradient checkpointing"), std::string::npos);
}

}  // namespace
}  // namespace peft::test
