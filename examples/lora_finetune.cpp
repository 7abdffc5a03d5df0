// peft-lora-finetune: the end-to-end example. Fine-tunes a LoRA delta on a frozen GPT-2 over a
// text file, reports held-out perplexity before and after, saves the delta in Hugging Face
// PEFT's format, then reloads it onto a fresh base and checks it reproduces the result.
//
// Text is fed as UTF-8 bytes (ids 0..255), which fits any GPT-2 vocabulary of >= 256 entries.
#include <chrono>
#include <fstream>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <peft/checkpoint/delta.h>
#include <peft/core/error.h>
#include <peft/core/json_io.h>
#include <peft/methods/method.h>
#include <peft/models/load.h>
#include <peft/peft_model.h>
#include <peft/core/process.h>

namespace {

at::Tensor read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PEFT_CHECK(in.good(), "example", "{}: cannot open the text file", path);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  PEFT_CHECK(s.size() > 1000, "example", "{}: expected at least 1000 bytes of text, found {}", path, s.size());
  auto t = torch::from_blob(s.data(), {static_cast<int64_t>(s.size())}, torch::kUInt8);
  return t.to(torch::kLong);
}

/// Mean next-token loss over the first `blocks` non-overlapping blocks of `data`.
double evaluate(peft::PeftModel& model, const at::Tensor& data, int64_t block, int64_t blocks) {
  torch::NoGradGuard g;
  model.eval();
  blocks = std::min(blocks, data.numel() / block);
  auto ids = data.slice(0, 0, blocks * block).view({blocks, block});
  double total = 0;
  int64_t n = 0;
  for (int64_t i = 0; i < blocks; i += 16) {
    peft::models::ModelInputs in;
    in.input_ids = ids.slice(0, i, std::min(i + 16, blocks));
    in.labels = in.input_ids;
    total += model.forward(in).loss.item<double>() * in.input_ids.size(0);
    n += in.input_ids.size(0);
  }
  return total / static_cast<double>(n);
}

int run(int argc, char** argv) {
  CLI::App app{"Fine-tune a LoRA delta on a frozen GPT-2 over a text file (bytes as tokens).", "peft-lora-finetune"};
  std::string model_dir = "examples/models/tiny-gpt2", train_path = "examples/data/mobydick/train.txt",
              eval_path = "examples/data/mobydick/test.txt", config_path = "configs/lora_gpt2.json",
              out_dir = "runs/mobydick-lora";
  int64_t steps = 400, batch = 16, block = 128, eval_blocks = 256, seed = 42;
  double lr = 1e-2, warmup = 0.05;
  int threads = 0;
  app.add_option("--model", model_dir, "base model directory (Hugging Face format)")->capture_default_str();
  app.add_option("--train", train_path, "training text (UTF-8)")->capture_default_str();
  app.add_option("--eval", eval_path, "held-out text (UTF-8)")->capture_default_str();
  app.add_option("--lora-config", config_path, "LoRA config (adapter_config.json fields)")->capture_default_str();
  app.add_option("--out", out_dir, "where the delta is written")->capture_default_str();
  app.add_option("--steps", steps, "optimizer steps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "sequences per step")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--block", block, "tokens per sequence")->capture_default_str()->check(CLI::Range(8, 4096));
  app.add_option("--eval-blocks", eval_blocks, "held-out blocks to score")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--lr", lr, "peak learning rate (AdamW, linear warm-up then linear decay)")->capture_default_str();
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  const int used_threads = peft::core::configure_threads(threads);
  torch::manual_seed(seed);

  auto base = peft::models::load_pretrained(model_dir);
  const auto vocab = base->config_json().value("vocab_size", 0);
  PEFT_CHECK(vocab >= 256, "example", "{}: byte tokens need a vocabulary of at least 256, found {}", model_dir, vocab);
  const int64_t positions = base->geometry().max_positions;
  PEFT_CHECK(block <= positions, "example", "--block {} exceeds the model's {} positions", block, positions);
  auto train = read_bytes(train_path), held_out = read_bytes(eval_path);

  peft::PeftModel model(base);
  auto config = peft::methods::parse_config(peft::core::read_json_file(config_path));
  model.add_adapter("default", *config);
  fmt::print("model {} ({} layers) | LoRA from {} | {} threads\n{}\n", model_dir, base->num_layers(), config_path,
             used_threads, model.trainable_parameters_report());

  const double before = evaluate(model, held_out, block, eval_blocks);
  fmt::print("held-out loss before: {:.4f} (perplexity {:.2f} per byte)\n", before, std::exp(before));

  torch::optim::AdamW opt(model.trainable_parameters(), torch::optim::AdamWOptions(lr).weight_decay(0.0));
  const int64_t warm = std::max<int64_t>(1, static_cast<int64_t>(warmup * steps));
  auto start = std::chrono::steady_clock::now();
  for (int64_t step = 1; step <= steps; ++step) {
    model.train();
    const double scale = step <= warm ? double(step) / warm : double(steps - step + 1) / double(steps - warm + 1);
    for (auto& group : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr * scale);
    auto starts = torch::randint(0, train.numel() - block, {batch}, torch::kLong);
    auto offsets = starts.unsqueeze(1) + torch::arange(block, torch::kLong).unsqueeze(0);
    peft::models::ModelInputs in;
    in.input_ids = train.index({offsets});
    in.labels = in.input_ids;
    opt.zero_grad();
    auto loss = model.forward(in).loss;
    PEFT_CHECK(std::isfinite(loss.item<double>()), "example", "non-finite loss at step {}", step);
    loss.backward();
    opt.step();
    if (step % 100 == 0 || step == steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      fmt::print("step {:>5}/{} | loss {:.4f} | {:.0f} tokens/s\n", step, steps, loss.item<double>(),
                 double(step * batch * block) / secs);
    }
  }
  const double after = evaluate(model, held_out, block, eval_blocks);
  fmt::print("held-out loss after:  {:.4f} (perplexity {:.2f} per byte)\n", after, std::exp(after));

  peft::checkpoint::save_adapter(model, out_dir);
  fmt::print("delta saved to {} ({} bytes of weights)\n", out_dir,
             std::filesystem::file_size(out_dir + "/adapter_model.safetensors"));

  // The delta alone, on a fresh copy of the base, reproduces the fine-tuned model.
  peft::PeftModel reloaded(peft::models::load_pretrained(model_dir));
  peft::checkpoint::load_adapter(reloaded, out_dir);
  const double again = evaluate(reloaded, held_out, block, eval_blocks);
  fmt::print("reloaded delta held-out loss: {:.4f} ({})\n", again, again == after ? "identical" : "DIFFERENT");
  return again == after && after < before ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-lora-finetune", [&] { return run(argc, argv); });
}
