// peft-spam-lora: the main job. Fine-tunes a LoRA delta (plus a new classification head) on a
// frozen, pretrained GPT-2 (examples/models/gpt2-en-6m) to tell spam from ham on real SpamAssassin mail; prints the
// accuracy of the untuned base next to the tuned one, the delta's size next to the base's,
// then reloads the delta onto a fresh base and classifies held-back mails with it.
#include <filesystem>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <peft/core/process.h>
#include <peft/checkpoint/delta.h>
#include <peft/core/error.h>
#include <peft/core/json_io.h>
#include <peft/data/subset.h>
#include <peft/data/text_classification.h>
#include <peft/methods/method.h>
#include <peft/models/load.h>
#include <peft/peft_model.h>
#include <peft/train/trainer.h>

namespace {
namespace fs = std::filesystem;

std::shared_ptr<peft::models::PretrainedModel> load_base(const std::string& dir, uint64_t seed) {
  torch::manual_seed(seed);  // the new head's random init: a different seed, a different head
  peft::models::LoadOptions o;
  o.task = "sequence_classification";
  o.num_labels = 2;
  return peft::models::load_pretrained(dir, o);
}

std::string subject(const std::string& text) {
  auto line = text.substr(0, text.find('\n'));
  return line.size() > 70 ? line.substr(0, 67) + "..." : line;
}

int run(int argc, char** argv) {
  CLI::App app{"Fine-tune a LoRA delta on a frozen tiny GPT-2 to classify spam (SpamAssassin sample).",
               "peft-spam-lora"};
  std::string model_dir = "examples/models/gpt2-en-6m", train_path = "examples/data/spam/train.jsonl",
              test_path = "examples/data/spam/test.jsonl", config_path = "configs/spam_lora.json",
              out_dir = "runs/spam-lora";
  peft::train::TrainerConfig tc;
  tc.max_steps = 300;
  tc.batch_size = 16;
  tc.lr = 2e-3;
  tc.warmup_steps = 20;
  tc.weight_decay = 0.0;
  tc.eval_every = 100;
  tc.log_every = 10;
  int64_t max_length = 128;
  int threads = 0;
  app.add_option("--model", model_dir, "frozen base (Hugging Face directory with its tokenizer)")->capture_default_str();
  app.add_option("--train", train_path, "training mails (JSONL: text, label)")->capture_default_str();
  app.add_option("--test", test_path, "held-out mails (JSONL: text, label)")->capture_default_str();
  app.add_option("--lora-config", config_path, "LoRA config (adapter_config.json fields)")->capture_default_str();
  app.add_option("--out", out_dir, "run directory: log, best/ and final/ delta")->capture_default_str();
  app.add_option("--steps", tc.max_steps, "optimizer steps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--batch", tc.batch_size, "mails per step")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--lr", tc.lr, "peak learning rate")->capture_default_str();
  app.add_option("--max-length", max_length, "tokens read per mail")->capture_default_str();
  app.add_option("--seed", tc.seed, "random seed")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  const int used = peft::core::configure_threads(threads);
  tc.output_dir = out_dir;
  tc.overwrite = true;  // the example's own output directory: each run replaces the last
  const auto t0 = std::chrono::steady_clock::now();

  auto tokenizer = peft::tokenizers::load_tokenizer(model_dir);
  peft::data::TextClassificationOptions dopt;
  dopt.max_length = max_length;
  dopt.pad_id = tokenizer->special().pad.value_or(tokenizer->special().eos.value_or(0));
  auto mails = std::make_shared<peft::data::TextClassificationDataset>(train_path, tokenizer, dopt);
  dopt.labels = mails->labels();
  auto test = std::make_shared<peft::data::TextClassificationDataset>(test_path, tokenizer, dopt);
  // 10 % of the training mails choose the delta (best/); the test mails only score the choice.
  const auto split = peft::data::split_validation(mails, 0.1, /*seed=*/0);
  fmt::print("data   train {} + validation {} records, test {} records, labels {} (from {})\n", split.train->size(),
             split.validation->size(), test->size(), fmt::join(mails->labels(), "/"), train_path);

  auto base = load_base(model_dir, tc.seed);
  peft::PeftModel model(base);
  model.eval();
  auto forward = [&](const peft::models::ModelInputs& in) { return model.forward(in); };
  const auto before = peft::train::evaluate(forward, *test, 32, 0, tc.device);
  int64_t majority = 0;
  for (int64_t i = 0; i < test->size(); ++i) majority += test->label(i) == 0;
  fmt::print("base   untuned (frozen GPT-2, new head): accuracy {:.3f}  macro-F1 {:.3f}   (majority class: {:.3f})\n",
             before.accuracy, before.macro_f1, static_cast<double>(majority) / static_cast<double>(test->size()));

  auto lora = peft::methods::parse_config(peft::core::read_json_file(config_path));
  model.add_adapter("default", *lora);
  fmt::print("lora   {}\n", model.trainable_parameters_report());
  peft::train::Trainer trainer(peft::train::trainable_delta(model), tc, split.train, split.validation, test);
  auto result = trainer.train();
  const auto& after = *result.test_eval;
  fmt::print("data   {} of {} training mails were longer than {} tokens and cut\n", mails->truncated(), mails->size(),
             max_length);
  fmt::print("tuned  {} steps; the delta of step {} (best validation accuracy, {:.3f}) on the test mails: accuracy "
             "{:.3f}  macro-F1 {:.3f}  (loss {:.4f} -> {:.4f})\n",
             result.steps, result.selected_step, result.best_eval->accuracy, after.accuracy, after.macro_f1,
             before.loss, after.loss);

  const auto delta_bytes = fs::file_size(out_dir + "/best/adapter_model.safetensors");
  const auto base_bytes = fs::file_size(model_dir + "/model.safetensors");
  fmt::print("size   delta {:.1f} KiB (LoRA + head) vs base {:.1f} KiB: {:.1f}% of the base\n", delta_bytes / 1024.0,
             base_bytes / 1024.0, 100.0 * static_cast<double>(delta_bytes) / static_cast<double>(base_bytes));

  // A fresh process would do this: the bare base (another random head) + the delta.
  peft::PeftModel reloaded(load_base(model_dir, tc.seed + 1));
  peft::checkpoint::load_adapter(reloaded, out_dir + "/best");
  reloaded.eval();
  auto reforward = [&](const peft::models::ModelInputs& in) { return reloaded.forward(in); };
  const auto again = peft::train::evaluate(reforward, *test, 32, 0, tc.device);
  PEFT_CHECK(again.accuracy == after.accuracy, "example", "the reloaded delta scores {} instead of {}", again.accuracy,
             after.accuracy);
  fmt::print("reload {}/best onto a fresh base: accuracy {:.3f} (identical)\n", out_dir, again.accuracy);

  // A few held-back mails, both kinds, classified by the reloaded delta.
  std::vector<int64_t> picks;
  for (int64_t want : {0, 1})
    for (int64_t i = test->size() - 1, n = 0; i >= 0 && n < 3; --i)
      if (test->label(i) == want) picks.push_back(i), ++n;
  torch::NoGradGuard no_grad;
  auto probs = torch::softmax(reloaded.forward(test->batch(picks)).logits, -1);
  const auto labels = test->labels();
  for (size_t k = 0; k < picks.size(); ++k) {
    const int64_t pred = probs[static_cast<int64_t>(k)].argmax().item<int64_t>();
    fmt::print("  [{:>4}] p(spam)={:.2f} -> {:<4} (truth {:<4}) {}\n", labels[static_cast<size_t>(pred)] ==
               labels[static_cast<size_t>(test->label(picks[k]))] ? "ok" : "MISS",
               probs[static_cast<int64_t>(k)][1].item<double>(), labels[static_cast<size_t>(pred)],
               labels[static_cast<size_t>(test->label(picks[k]))], subject(test->text(picks[k])));
  }
  fmt::print("done in {:.0f} s on {} thread(s)\n",
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), used);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-spam-lora", [&] { return run(argc, argv); });
}
