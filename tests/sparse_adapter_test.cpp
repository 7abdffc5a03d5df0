// SparseAdapter: the pruned share is what the config says (globally or per matrix), pruned
// weights stay exactly zero through training, SNIP uses a batch, and masks survive save/load.
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/data/batch_source.h"
#include "peft/methods/method.h"
#include "peft/methods/sparse_adapter.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/optim/adamw.h"
#include "test_util.h"

namespace peft::test {
namespace {

nlohmann::json sparse(double fraction, const std::string& score, const std::string& scope) {
  return {{"peft_type", "SPARSE_ADAPTER"}, {"task_type", "SEQ_CLS"}, {"pruned_fraction", fraction}, {"score", score},
          {"scope", scope}, {"adapter", {{"preset", "houlsby"}, {"bottleneck_size", 8}, {"init_weights", "houlsby"}}}};
}

int64_t zeros_in_adapters(PeftModel& m) {
  int64_t z = 0;
  for (auto& [k, t] : m.adapter_state_dict("default"))
    if (k.find(".adapters.") != std::string::npos && k.find("weight") != std::string::npos) z += (t == 0).sum().item<int64_t>();
  return z;
}

TEST(SparseAdapter, PrunesTheConfiguredShareAndKeepsItZero) {
  for (const std::string scope : {"global", "local"})
    for (const std::string score : {"rand", "mag"}) {
      PeftModel model(models::load_pretrained(fixture("hf/models/bert")));
      model.add_adapter("default", *methods::parse_config(sparse(0.8, score, scope)));
      EXPECT_NEAR(methods::sparse_adapter_density(model, "default"), 0.8, 0.01) << scope << " " << score;
      const int64_t zeros = zeros_in_adapters(model);
      // Train a few steps: the pruned entries must not move.
      auto target = model.trainable_parameters();
      std::vector<std::pair<std::string, at::Tensor>> named;
      for (size_t i = 0; i < target.size(); ++i) named.emplace_back(std::to_string(i), target[i]);
      optim::AdamW opt(named, {});
      auto batch = fixture_inputs("hf/models/bert/inputs.safetensors", false);
      batch.labels = torch::tensor({0, 1}, torch::kLong);
      model.train();
      for (int step = 0; step < 3; ++step) {
        opt.zero_grad();
        model.forward(batch).loss.backward();
        opt.step(1e-2);
      }
      EXPECT_EQ(zeros_in_adapters(model), zeros) << "pruned weights stay exactly zero";
    }
}

TEST(SparseAdapter, GraspUsesABatch) {
  PeftModel model(models::load_pretrained(fixture("hf/models/bert")));
  model.add_adapter_without_data("default", *methods::parse_config(sparse(0.3, "grasp", "local")));
  auto batch = fixture_inputs("hf/models/bert/inputs.safetensors", false);
  batch.labels = torch::tensor({0, 1}, torch::kLong);
  auto before = model.adapter_state_dict("default");
  std::map<std::string, at::Tensor> masks_before;
  for (auto& [k, t] : before)
    if (k.find("mask_bits") != std::string::npos) masks_before[k] = t.clone();
  model.prepare_adapter("default", data::FixedBatches({batch}));
  EXPECT_NEAR(methods::sparse_adapter_density(model, "default"), 0.3, 0.01);
  bool changed = false;
  for (auto& [k, t] : model.adapter_state_dict("default"))
    if (masks_before.count(k)) changed = changed || !torch::equal(masks_before[k], t);
  EXPECT_TRUE(changed) << "the adapter was dense until GraSP scored it";
}

TEST(SparseAdapter, SnipUsesABatchAndMasksSurviveSaveLoad) {
  PeftModel model(models::load_pretrained(fixture("hf/models/bert")));
  model.add_adapter_without_data("default", *methods::parse_config(sparse(0.4, "snip", "global")));
  auto batch = fixture_inputs("hf/models/bert/inputs.safetensors", false);
  batch.labels = torch::tensor({0, 1}, torch::kLong);
  model.prepare_adapter("default", data::FixedBatches({batch}));
  EXPECT_NEAR(methods::sparse_adapter_density(model, "default"), 0.4, 0.01);
  TempDir dir;
  checkpoint::save_adapter(model, dir.file("delta"));
  PeftModel fresh(models::load_pretrained(fixture("hf/models/bert")));
  checkpoint::load_adapter(fresh, dir.file("delta"));
  auto a = model.adapter_state_dict("default"), b = fresh.adapter_state_dict("default");
  for (auto& [k, t] : a) EXPECT_TRUE(bit_equal(t, b.at(k))) << k;
  EXPECT_TRUE(a.count("base_model.model.bert.encoder.layer.0.adapters.ffn.down.mask_bits"));
  EXPECT_EQ(a.at("base_model.model.bert.encoder.layer.0.adapters.ffn.down.mask_bits").numel(), 8 * 64 / 8);
}

TEST(SparseAdapter, ANestedAdapterObjectKeepsTheDefaultsItDoesNotName) {
  // {"bottleneck_size": 8} alone keeps the Houlsby init, so SNIP ranks by score: the cut spreads
  // over every matrix instead of removing whole adapters of the lowest blocks by position.
  auto cfg = methods::parse_config({{"peft_type", "SPARSE_ADAPTER"}, {"task_type", "SEQ_CLS"}, {"score", "snip"},
                                    {"pruned_fraction", 0.5}, {"adapter", {{"preset", "pfeiffer"}, {"bottleneck_size", 8}}}});
  EXPECT_EQ(cfg->to_json()["adapter"]["init_weights"], "houlsby");
  EXPECT_EQ(cfg->to_json()["adapter"]["bottleneck_size"], 8);
  PeftModel model(models::load_pretrained(fixture("hf/models/bert")));
  auto batch = fixture_inputs("hf/models/bert/inputs.safetensors", false);
  batch.labels = torch::tensor({0, 1}, torch::kLong);
  model.add_adapter("default", *cfg, data::FixedBatches({batch}));
  EXPECT_NEAR(methods::sparse_adapter_density(model, "default"), 0.5, 0.01);
  int64_t matrices = 0;
  for (auto& [k, t] : model.adapter_state_dict("default")) {
    if (k.find(".adapters.") == std::string::npos || k.find(".weight") == std::string::npos) continue;
    const double kept = (t != 0).to(torch::kDouble).mean().item<double>();
    EXPECT_GT(kept, 0.1) << k << " lost almost every entry";
    EXPECT_LT(kept, 0.9) << k << " kept almost every entry";
    ++matrices;
  }
  EXPECT_EQ(matrices, 4) << "down and up of 2 layers";
  // A zero-initialised up projection gives scores that rank nothing: refused by name.
  const auto e = error_of([] {
    methods::parse_config({{"peft_type", "SPARSE_ADAPTER"}, {"score", "mag"}, {"adapter", {{"init_weights", "zero_up"}}}});
  });
  EXPECT_NE(e.find("adapter.init_weights is 'zero_up'"), std::string::npos) << e;
  EXPECT_NO_THROW(methods::parse_config(
      {{"peft_type", "SPARSE_ADAPTER"}, {"score", "rand"}, {"adapter", {{"init_weights", "zero_up"}}}}));
}

}  // namespace
}  // namespace peft::test
