// Classification beside a causal LM on one base: share_weights makes a classifier's backbone the
// LM's tensors (same outputs as a copy), and ClassifierPool serves deltas of any label count
// with the probabilities of each delta's own classifier.
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/models/share_weights.h"
#include "peft/peft_model.h"
#include "peft/serve/classifier_pool.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

std::string base_dir() { return std::string(PEFT_SOURCE_DIR) + "/examples/models/tiny-gpt2-en"; }

TEST(ShareWeights, TheClassifiersBackboneIsTheLMsTensorsAndItsHeadItsOwn) {
  for (const std::string family : {"gpt2", "llama"}) {
    auto lm = tiny_model(family);
    auto classifier = models::create_model(tiny_config(family), "sequence_classification", 3);
    auto copy = models::create_model(tiny_config(family), "sequence_classification", 3);
    {
      torch::NoGradGuard g;
      auto lm_params = lm->named_parameters();
      for (auto& p : copy->named_parameters())
        if (lm_params.contains(p.key()) && lm_params[p.key()].sizes() == p.value().sizes()) p.value().copy_(lm_params[p.key()]);
      for (const auto& p : classifier->named_parameters())
        if (p.key().rfind("score.", 0) == 0) copy->named_parameters()[p.key()].copy_(p.value());
    }
    const int64_t shared = models::share_weights(*classifier, *lm);
    int64_t backbone = 0;
    auto lm_params = lm->named_parameters();
    for (const auto& p : classifier->named_parameters()) {
      const bool head = p.key().rfind("score.", 0) == 0;
      if (head) {
        EXPECT_FALSE(lm_params.contains(p.key())) << family << " " << p.key();
        continue;
      }
      ++backbone;
      ASSERT_TRUE(lm_params.contains(p.key())) << family << " " << p.key();
      EXPECT_EQ(p.value().data_ptr(), lm_params[p.key()].data_ptr()) << family << " " << p.key() << " is held once";
    }
    EXPECT_GE(shared, backbone) << family;
    EXPECT_EQ(models::share_weights(*classifier, *lm), 0) << "already shared";
    classifier->eval();
    copy->eval();
    torch::NoGradGuard g;
    const auto in = tiny_batch(family);
    models::ModelInputs ids;
    ids.input_ids = in.input_ids;
    ids.attention_mask = torch::ones_like(in.input_ids);
    EXPECT_TRUE(bit_equal(classifier->forward(ids).logits, copy->forward(ids).logits)) << family;
  }
}

TEST(ClassifierPool, DeltasOfAnyLabelCountEqualTheirOwnClassifier) {
  TempDir dir;
  const std::vector<std::vector<int64_t>> inputs = {{5, 17, 230, 41, 9}, {88}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}};
  std::map<std::string, std::vector<at::Tensor>> expected;
  torch::manual_seed(3);
  for (const auto& [name, labels] : std::vector<std::pair<std::string, int64_t>>{{"two", 2}, {"three", 3}}) {
    models::LoadOptions o;
    o.task = "sequence_classification";
    o.num_labels = labels;
    PeftModel m(models::load_pretrained(base_dir(), o));
    m.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"task_type", "SEQ_CLS"}, {"r", 4},
                                                     {"target_modules", {"c_attn"}}, {"fan_in_fan_out", true}}));
    {
      torch::NoGradGuard g;
      for (auto& p : m.trainable_parameters()) p.add_(torch::randn_like(p) * 0.3);
    }
    checkpoint::save_adapter(m, dir.file(name));
    m.eval();
    torch::NoGradGuard g;
    for (const auto& ids : inputs) {
      models::ModelInputs in;
      in.input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0);
      expected[name].push_back(m.forward(in).logits.reshape({-1}).to(torch::kFloat64).softmax(0));
    }
  }
  auto lm = models::load_pretrained(base_dir(), {});
  serve::ClassifierPool pool(base_dir(), {}, lm);
  EXPECT_TRUE(serve::ClassifierPool::is_classifier_delta(dir.file("two")));
  pool.load("two", dir.file("two"));
  pool.load("three", dir.file("three"));
  EXPECT_EQ(pool.labels("two"), (std::vector<std::string>{"LABEL_0", "LABEL_1"}));
  EXPECT_EQ(pool.labels("three").size(), 3u);
  EXPECT_EQ(pool.adapters(), (std::vector<std::string>{"three", "two"}));
  for (const std::string name : {"two", "three", "two"}) {
    const auto got = pool.classify(name, inputs);
    ASSERT_EQ(got.size(), inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      const at::Tensor p = torch::tensor(got[i].probabilities, torch::kFloat64);
      EXPECT_LT(max_abs_diff(p, expected[name][i]), 1e-7) << name << " input " << i;
      EXPECT_EQ(got[i].label, expected[name][i].argmax().item<int64_t>()) << name << " input " << i;
    }
  }
  // A causal-LM delta is not a classifier's; bad inputs are named; removal.
  {
    PeftModel causal(models::load_pretrained(base_dir(), {}));
    causal.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"r", 2},
                                                          {"target_modules", {"c_attn"}}, {"fan_in_fan_out", true}}));
    checkpoint::save_adapter(causal, dir.file("causal"));
  }
  EXPECT_FALSE(serve::ClassifierPool::is_classifier_delta(dir.file("causal")));
  EXPECT_NE(error_of([&] { pool.load("causal", dir.file("causal")); }).find("SEQ_CLS"), std::string::npos);
  EXPECT_NE(error_of([&] { pool.load("two", dir.file("two")); }).find("already loaded"), std::string::npos);
  EXPECT_NE(error_of([&] { pool.classify("two", {{}}); }).find("no tokens"), std::string::npos);
  EXPECT_NE(error_of([&] { pool.classify("two", {{1, 999999}}); }).find("vocabulary"), std::string::npos);
  EXPECT_NE(error_of([&] { pool.classify("two", {std::vector<int64_t>(300, 1)}); }).find("positions"), std::string::npos);
  EXPECT_TRUE(pool.remove("two"));
  EXPECT_FALSE(pool.remove("two"));
  EXPECT_NE(error_of([&] { pool.classify("two", inputs); }).find("no classification delta named 'two'"), std::string::npos);
  EXPECT_EQ(pool.classify("three", inputs).size(), inputs.size()) << "the other delta still serves";
}

}  // namespace
}  // namespace peft::test
