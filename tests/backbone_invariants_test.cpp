// Properties that pin each backbone's maths beyond the fixtures' geometry: RoBERTa against BERT,
// grouped-query against plain multi-head attention, rotary scaling, tied heads, task heads that
// travel in a delta, and CPU == CUDA.
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/core/safetensors.h"
#include "peft/methods/method.h"
#include "peft/models/heads.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/train/trainer.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

using torch::indexing::Slice;

void copy_params(models::PretrainedModel& to, const std::map<std::string, at::Tensor>& from) {
  torch::NoGradGuard g;
  for (auto& item : to.named_parameters()) {
    ASSERT_TRUE(from.count(item.key())) << item.key();
    item.value().set_data(from.at(item.key()).clone());
  }
}

std::map<std::string, at::Tensor> params_of(models::PretrainedModel& m) {
  std::map<std::string, at::Tensor> out;
  for (auto& item : m.named_parameters()) out[item.key()] = item.value().detach();
  return out;
}

TEST(RobertaVsBert, SameEncoderOnRealTokensWithShiftedPositions) {
  // RoBERTa numbers real tokens from pad_token_id + 1. With BERT's weights and BERT's position
  // table shifted down one row, RoBERTa must compute BERT's function on every real token.
  models::LoadOptions bare;
  bare.task = "feature_extraction";
  auto bert = models::load_pretrained(fixture("hf/models/bert"), bare);
  auto cfg = core::read_json_file(fixture("hf/models/bert/config.json"));
  cfg["model_type"] = "roberta";
  cfg["max_position_embeddings"] = 513;
  cfg.erase("architectures");
  auto roberta = models::create_model(cfg, "feature_extraction");
  EXPECT_EQ(roberta->architecture(), "RobertaModel");
  auto weights = params_of(*bert);
  at::Tensor pos = weights.at("embeddings.position_embeddings.weight");
  weights["embeddings.position_embeddings.weight"] = torch::cat({torch::zeros({1, pos.size(1)}), pos}, 0);
  copy_params(*roberta, weights);
  bert->eval();
  roberta->eval();
  torch::NoGradGuard g;
  auto inputs = fixture_inputs("hf/models/bert/inputs.safetensors");
  auto a = bert->forward(inputs), b = roberta->forward(inputs);
  EXPECT_LT(max_abs_diff(a.last_hidden_state[0], b.last_hidden_state[0]), 1e-5);
  EXPECT_LT(max_abs_diff(a.last_hidden_state[1].slice(0, 0, 8), b.last_hidden_state[1].slice(0, 0, 8)), 1e-5);
  EXPECT_LT(max_abs_diff(a.pooler_output, b.pooler_output), 1e-5);
  // The padded positions really are numbered differently (padding_idx), so the rows differ there.
  EXPECT_GT(max_abs_diff(a.last_hidden_state[1].slice(0, 8), b.last_hidden_state[1].slice(0, 8)), 1e-3);

  // RobertaForSequenceClassification: out_proj(tanh(dense(h[:, 0]))), no pooler.
  auto cls = models::create_model(cfg, "sequence_classification");
  auto names = cls->named_parameters();
  EXPECT_FALSE(names.contains("roberta.pooler.dense.weight"));
  EXPECT_EQ(names["classifier.out_proj.weight"].sizes(), (c10::IntArrayRef{2, 64}));
  std::map<std::string, at::Tensor> with_prefix;
  for (auto& [k, t] : weights) with_prefix["roberta." + k] = t;
  for (auto& item : names)
    if (item.key().rfind("classifier.", 0) == 0) with_prefix[item.key()] = item.value().detach().clone();
  copy_params(*cls, with_prefix);
  cls->eval();
  auto h = b.last_hidden_state.select(1, 0);
  auto expected = torch::nn::functional::linear(
      torch::tanh(torch::nn::functional::linear(h, names["classifier.dense.weight"], names["classifier.dense.bias"])),
      names["classifier.out_proj.weight"], names["classifier.out_proj.bias"]);
  EXPECT_LT(max_abs_diff(cls->forward(inputs).logits, expected), 1e-6);
}

TEST(LlamaAttention, GroupedQueryEqualsMultiHeadWithSharedKeyValueHeads) {
  auto gqa = tiny_model("llama");
  auto cfg = tiny_config("llama");
  const int64_t heads = cfg["num_attention_heads"], kv = cfg["num_key_value_heads"];
  const int64_t d = cfg["hidden_size"].get<int64_t>() / heads, rep = heads / kv;
  cfg["num_key_value_heads"] = heads;
  auto mha = models::create_model(cfg);
  auto weights = params_of(*gqa);
  for (auto& [k, t] : weights)
    if (k.find("k_proj.weight") != std::string::npos || k.find("v_proj.weight") != std::string::npos)
      t = t.view({kv, d, -1}).repeat_interleave(rep, 0).reshape({heads * d, -1});
  copy_params(*mha, weights);
  torch::NoGradGuard g;
  auto batch = tiny_batch("llama");
  EXPECT_LT(max_abs_diff(gqa->forward(batch).logits, mha->forward(batch).logits), 1e-5);
}

TEST(LlamaRope, LinearScalingDividesPositionsAndDynamicIsInertWithinTheTrainedLength) {
  auto base = tiny_model("llama");
  auto cfg = tiny_config("llama");
  cfg["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  auto linear = models::create_model(cfg);
  cfg["rope_scaling"] = {{"type", "dynamic"}, {"factor", 4.0}};
  auto dynamic = models::create_model(cfg);
  copy_params(*linear, params_of(*base));
  copy_params(*dynamic, params_of(*base));
  torch::NoGradGuard g;
  models::ModelInputs in;
  in.input_ids = torch::randint(2, 61, {1, 7}, torch::kLong);
  in.position_ids = torch::arange(7).unsqueeze(0);
  auto plain = base->forward(in).logits;
  EXPECT_LT(max_abs_diff(dynamic->forward(in).logits, plain), 1e-6);
  in.position_ids = in.position_ids * 2;
  EXPECT_LT(max_abs_diff(linear->forward(in).logits, plain), 1e-5);
  EXPECT_GT(max_abs_diff(base->forward(in).logits, plain), 1e-4) << "positions matter";
}

TEST(LlamaHead, TiedHeadIsTheEmbedding) {
  auto cfg = tiny_config("llama");
  cfg["tie_word_embeddings"] = true;
  auto model = models::create_model(cfg);
  auto p = model->named_parameters();
  EXPECT_FALSE(p.contains("lm_head.weight"));
  EXPECT_EQ(model->tied_weights().at("lm_head.weight"), "model.embed_tokens.weight");
  torch::NoGradGuard g;
  auto out = model->forward(tiny_batch("llama"));
  EXPECT_LT(max_abs_diff(out.logits, torch::matmul(out.last_hidden_state, p["model.embed_tokens.weight"].t())), 1e-5);
}

// ---- a classification delta carries its head ---------------------------------

/// Saves `model`'s backbone without its head: what a user downloads before fine-tuning.
void save_bare_base(models::PretrainedModel& model, const std::string& dir) {
  std::filesystem::create_directories(dir);
  safetensors::TensorMap weights;
  for (auto& item : model.named_parameters()) {
    bool head = false;
    for (const auto& h : model.head_modules()) head = head || item.key().rfind(h + ".", 0) == 0;
    if (!head) weights[item.key()] = item.value().detach();
  }
  safetensors::save_file(dir + "/model.safetensors", weights);
  core::write_json_file(dir + "/config.json", model.config_json());
}

class HeadInDelta : public ::testing::TestWithParam<std::string> {};

TEST_P(HeadInDelta, ReloadsOntoTheBareBaseAndReproducesPredictions) {
  const std::string family = GetParam();
  const std::string task = family == "vit" ? "image_classification" : "sequence_classification";
  auto cfg = tiny_config(family);
  cfg["pad_token_id"] = family == "roberta" ? 1 : 0;
  torch::manual_seed(5);
  auto original = models::create_model(cfg, task, 3);
  TempDir tmp;
  save_bare_base(*original, tmp.file("base"));

  models::LoadOptions load;
  load.task = task;
  load.num_labels = 3;
  torch::manual_seed(1);
  PeftModel trained(models::load_pretrained(tmp.file("base"), load));
  trained.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"r", 2}, {"task_type", "SEQ_CLS"}}));
  {
    torch::NoGradGuard g;
    for (auto& t : trained.trainable_parameters()) t.add_(torch::randn_like(t) * 0.1);  // "training"
  }
  trained.eval();
  auto batch = tiny_batch(family);
  batch.labels = at::Tensor();
  at::Tensor expected;
  {
    torch::NoGradGuard g;
    expected = trained.forward(batch).logits.clone();
  }
  EXPECT_EQ(expected.size(-1), 3);
  checkpoint::save_adapter(trained, tmp.file("delta"));
  safetensors::File delta(tmp.file("delta/adapter_model.safetensors"));
  bool has_head = false;
  for (const auto& t : delta.tensors())
    has_head = has_head || t.name.find(".classifier.") != std::string::npos || t.name.find(".score.") != std::string::npos;
  EXPECT_TRUE(has_head) << "the head travels in the delta";

  torch::manual_seed(2);  // a different random head on the fresh base
  PeftModel fresh(models::load_pretrained(tmp.file("base"), load));
  fresh.eval();
  torch::NoGradGuard g;
  EXPECT_GT(max_abs_diff(fresh.forward(batch).logits, expected), 1e-4);
  checkpoint::load_adapter(fresh, tmp.file("delta"));
  EXPECT_TRUE(bit_equal(fresh.forward(batch).logits, expected));
}

INSTANTIATE_TEST_SUITE_P(Families, HeadInDelta, ::testing::ValuesIn(tiny_families()));

// ---- devices ---------------------------------------------------------------------

TEST(Backbones, EveryFamilyRunsOnCUDAAsOnCPU_CUDA) {
  ASSERT_TRUE(torch::cuda::is_available());
  for (const auto& family : tiny_families()) {
    auto model = tiny_model(family);
    model->eval();
    auto batch = tiny_batch(family);
    torch::NoGradGuard g;
    auto cpu = model->forward(batch);
    model->to(torch::kCUDA);
    auto gpu = model->forward(train::to_device(batch, c10::Device(c10::kCUDA)));
    EXPECT_LT(max_abs_diff(gpu.logits.cpu(), cpu.logits), 1e-4) << family;
    EXPECT_LT(std::abs(gpu.loss.item<double>() - cpu.loss.item<double>()), 1e-4) << family;
  }
}

// The loss shifts the labels instead of the logits; it must be the mean over the positions whose
// next token is labelled (ignored: -100), with the gradient of that mean, whatever the masking.
TEST(CausalLmLoss, MeanOverLabelledNextTokensWithItsGradient) {
  torch::manual_seed(3);
  auto logits = torch::randn({2, 5, 7}, torch::kDouble).requires_grad_(true);
  auto labels = torch::randint(0, 7, {2, 5}, torch::kLong);
  labels.index_put_({0, 2}, -100);
  labels.index_put_({1, 4}, -100);
  auto loss = models::causal_lm_loss(logits, labels);
  double sum = 0;
  int64_t count = 0;
  auto logp = torch::log_softmax(logits.detach(), -1);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t + 1 < 5; ++t) {
      const int64_t next = labels[b][t + 1].item<int64_t>();
      if (next == -100) continue;
      sum -= logp[b][t][next].item<double>();
      ++count;
    }
  EXPECT_EQ(count, 6);
  EXPECT_NEAR(loss.item<double>(), sum / static_cast<double>(count), 1e-12);
  loss.backward();
  auto expected = torch::softmax(logits.detach(), -1);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 5; ++t) {
      const int64_t next = t + 1 < 5 ? labels[b][t + 1].item<int64_t>() : -100;
      if (next == -100) expected[b][t].zero_();
      else expected[b][t][next] -= 1.0;
    }
  EXPECT_TRUE(torch::allclose(logits.grad(), expected / static_cast<double>(count), 1e-12, 1e-12));
}

}  // namespace
}  // namespace peft::test
