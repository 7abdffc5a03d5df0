// Model selection without the test set: validation splits carved from training data, and the
// trainer scoring its test set once, on the delta the validation set chose.
#include <filesystem>
#include <set>

#include <torch/torch.h>

#include "peft/core/safetensors.h"
#include "peft/data/subset.h"
#include "peft/train/run_config.h"
#include "peft/train/trainer.h"
#include "test_util.h"

namespace peft::test {
namespace {

/// Example i is a batch row holding the number `offset + i`; labelled when `classes` is non-empty.
class Numbered : public data::Dataset {
 public:
  Numbered(int64_t n, double offset = 0, std::vector<std::string> classes = {})
      : n_(n), offset_(offset), classes_(std::move(classes)) {}
  int64_t size() const override { return n_; }
  models::ModelInputs batch(const std::vector<int64_t>& idx) const override {
    models::ModelInputs in;
    in.pixel_values = torch::tensor(std::vector<int64_t>(idx.begin(), idx.end()), torch::kDouble).to(torch::kFloat) +
                      offset_;
    return in;
  }
  std::vector<std::string> labels() const override { return classes_; }
  std::string describe() const override { return "numbered"; }

 private:
  int64_t n_;
  double offset_;
  std::vector<std::string> classes_;
};

std::vector<int64_t> rows(const data::Dataset& d) {
  std::vector<int64_t> all(static_cast<size_t>(d.size()));
  for (int64_t i = 0; i < d.size(); ++i) all[static_cast<size_t>(i)] = i;
  auto t = d.batch(all).pixel_values.to(torch::kLong);
  return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()};
}

TEST(ValidationSplit, HoldsOutADisjointSeededShareAndKeepsLabels) {
  auto parent = std::make_shared<Numbered>(20, 0, std::vector<std::string>{"a", "b"});
  auto split = data::split_validation(parent, 0.25, 7);
  ASSERT_EQ(split.validation->size(), 5);
  ASSERT_EQ(split.train->size(), 15);
  auto held = rows(*split.validation), kept = rows(*split.train);
  std::set<int64_t> all(held.begin(), held.end());
  all.insert(kept.begin(), kept.end());
  EXPECT_EQ(all.size(), 20u);  // disjoint and covering
  EXPECT_TRUE(std::is_sorted(held.begin(), held.end()));  // the parent's order
  EXPECT_NE(held, (std::vector<int64_t>{15, 16, 17, 18, 19}));
  EXPECT_EQ(rows(*data::split_validation(parent, 0.25, 7).validation), held);  // the seed decides
  EXPECT_NE(rows(*data::split_validation(parent, 0.25, 8).validation), held);
  EXPECT_EQ(split.validation->labels(), parent->labels());
  // A text's blocks: the tail.
  EXPECT_EQ(rows(*data::split_validation(parent, 0.25, 7, data::HoldOut::kTail).validation),
            (std::vector<int64_t>{15, 16, 17, 18, 19}));
  // At least one example each way.
  EXPECT_EQ(data::split_validation(parent, 0.001, 1).validation->size(), 1);
  EXPECT_EQ(data::split_validation(parent, 0.999, 1).train->size(), 1);
  EXPECT_NE(error_of([&] { data::split_validation(parent, 1.0, 1); }).find("validation_fraction must be in (0, 1)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { data::split_validation(std::make_shared<Numbered>(1), 0.5, 1); })
                .find("at least 2 training examples"),
            std::string::npos);
  EXPECT_THROW(split.validation->batch({5}), Error);
}

TEST(ValidationSplit, FromARunConfig) {
  const std::string model = std::string(PEFT_SOURCE_DIR) + "/examples/models/tiny-gpt2-en";
  const nlohmann::json d = {{"kind", "jsonl_classification"},
                            {"train", std::string(PEFT_SOURCE_DIR) + "/examples/data/spam/train.jsonl"},
                            {"validation_fraction", 0.1},
                            {"max_length", 8}};
  auto data = train::load_run_data(d, model, "run.json", true);
  ASSERT_TRUE(data.validation);
  EXPECT_EQ(data.validation->size(), 160);
  EXPECT_EQ(data.train->size(), 1440);
  EXPECT_EQ(data.num_labels.value_or(0), 2);
  auto other_seed = d;
  other_seed["validation_seed"] = 3;
  auto again = train::load_run_data(other_seed, model, "run.json", true);
  EXPECT_FALSE(torch::equal(data.validation->batch({0, 1, 2}).input_ids, again.validation->batch({0, 1, 2}).input_ids));
  auto both = d;
  both["validation"] = "valid.jsonl";
  EXPECT_NE(error_of([&] { train::load_run_data(both, model, "run.json", true); })
                .find("run.json: data.validation and data.validation_fraction both name a validation set"),
            std::string::npos);
  auto bad = d;
  bad["validation_fraction"] = 1.5;
  EXPECT_NE(error_of([&] { train::load_run_data(bad, model, "run.json", true); })
                .find("data.validation_fraction must be in (0, 1)"),
            std::string::npos);
  // Validation selects, eval becomes the test.
  train::RunParts parts;
  parts.eval = data.train;
  EXPECT_EQ(train::evaluation_sets(parts).selection, parts.eval);
  EXPECT_FALSE(train::evaluation_sets(parts).test);
  parts.validation = data.validation;
  EXPECT_EQ(train::evaluation_sets(parts).selection, parts.validation);
  EXPECT_EQ(train::evaluation_sets(parts).test, parts.eval);
}

/// One trained number w: training pulls it to 1, the validation set prefers 0.3 and the test
/// set 0.35, so the best validation step is mid-run and the last step is worse.
struct Scalar {
  at::Tensor w = torch::zeros({1}).requires_grad_(true);
  train::Trainable target() {
    train::Trainable t;
    t.forward = [w = w](const models::ModelInputs& in) {
      models::ModelOutput out;
      out.loss = (w - in.pixel_values).pow(2).mean();
      return out;
    };
    t.parameters = [w = w] { return std::vector<std::pair<std::string, at::Tensor>>{{"w", w}}; };
    t.save = [w = w](const std::string& dir) {
      std::filesystem::create_directories(dir);
      safetensors::save_file(dir + "/w.safetensors", {{"w", w.detach().clone()}});
    };
    t.set_training = [](bool) {};
    return t;
  }
};

train::TrainerConfig selection_config(const std::string& out, int64_t steps) {
  train::TrainerConfig c;
  c.max_steps = steps;
  c.batch_size = 4;
  c.lr = 0.05;
  c.schedule = "constant";
  c.weight_decay = 0;
  c.max_grad_norm = 0;
  c.eval_every = 1;
  c.output_dir = out;
  c.progress = false;
  return c;
}

TEST(Trainer, TestSetScoresTheDeltaValidationChose) {
  auto train_set = std::make_shared<Numbered>(8, 1.0);  // every example "1"
  auto validation = std::make_shared<Numbered>(1, 0.3), test = std::make_shared<Numbered>(1, 0.35);
  Scalar s;
  TempDir dir;
  auto result = train::Trainer(s.target(), selection_config(dir.path(), 20), train_set, validation, test).train();
  ASSERT_TRUE(result.test_eval && result.best_eval);
  const double w_final = safetensors::load_file(dir.file("final/w.safetensors")).at("w").item<double>();
  const double w_best = safetensors::load_file(dir.file("best/w.safetensors")).at("w").item<double>();
  EXPECT_GT(w_final, 0.8);
  EXPECT_NEAR(w_best, 0.3, 0.05);
  EXPECT_GT(result.selected_step, 0);
  EXPECT_LT(result.selected_step, 20);
  // The live number is the chosen one, and the test scored it — not the last step's.
  EXPECT_EQ(s.w.item<double>(), w_best);
  EXPECT_NEAR(result.test_eval->loss, std::pow(w_best - 0.35, 2), 1e-7);
  EXPECT_NEAR(result.best_eval->loss, std::pow(w_best - 0.3, 2), 1e-7);
  EXPECT_EQ(result.test_eval->examples, 1);

  // Stopped at step 10 and resumed: the same step is chosen and scored.
  TempDir dir2;
  Scalar first;
  train::Trainer(first.target(), selection_config(dir2.path(), 10), train_set, validation, test).train();
  EXPECT_TRUE(std::filesystem::exists(dir2.file("state/best.safetensors")));
  Scalar resumed;
  train::Trainer again(resumed.target(), selection_config(dir2.path(), 20), train_set, validation, test);
  again.resume(dir2.file("state"));
  auto second = again.train();
  ASSERT_TRUE(second.test_eval);
  EXPECT_EQ(second.selected_step, result.selected_step);
  EXPECT_EQ(second.test_eval->loss, result.test_eval->loss);

  // Without a test set nothing is restored: the live number is the last step's.
  Scalar plain;
  auto no_test = train::Trainer(plain.target(), selection_config("", 20), train_set, validation).train();
  EXPECT_FALSE(no_test.test_eval);
  EXPECT_GT(plain.w.item<double>(), 0.8);
}

}  // namespace
}  // namespace peft::test
