// peft-generate: text generation with a causal LM (optionally with a delta): greedy, or
// sampling with temperature and nucleus (top-p) filtering.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "apps/runtime.h"
#include "peft/checkpoint/delta.h"
#include "peft/methods/prompt_learning.h"
#include "peft/core/error.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/tokenizers/tokenizer.h"

namespace {

/// The next token from the last position's logits.
int64_t pick(const at::Tensor& logits, double temperature, double top_p) {
  if (temperature <= 0.0) return logits.argmax().item<int64_t>();
  at::Tensor probs = torch::softmax(logits.to(torch::kFloat) / temperature, -1);
  if (top_p < 1.0) {
    auto [sorted, order] = probs.sort(-1, /*descending=*/true);
    at::Tensor cumulative = sorted.cumsum(-1);
    // Keep the smallest prefix whose mass reaches top_p (always at least one token).
    at::Tensor drop = (cumulative - sorted) >= top_p;
    sorted.masked_fill_(drop, 0.0);
    probs = torch::zeros_like(probs).scatter_(-1, order, sorted);
  }
  return torch::multinomial(probs, 1).item<int64_t>();
}

int run(int argc, char** argv) {
  CLI::App app{"Generate text with a causal language model (and optionally a delta).", "peft-generate"};
  std::string model_dir, adapter_dir, prompt, tokenizer_dir;
  int64_t max_new = 50, seed = 0;
  double temperature = 0.0, top_p = 1.0;
  int threads = 0;
  app.add_option("--model", model_dir, "causal LM directory (with its tokenizer)")->required();
  app.add_option("--adapter", adapter_dir, "delta directory to apply");
  app.add_option("--tokenizer", tokenizer_dir, "tokenizer directory (default: the model's)");
  app.add_option("--prompt", prompt, "text to continue")->required();
  app.add_option("--max-new-tokens", max_new, "tokens to generate")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--temperature", temperature, "0 = greedy; > 0 samples")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", top_p, "nucleus sampling mass (with --temperature > 0)")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  app.add_option("--seed", seed, "sampling seed")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  peft::apps::configure_threads(threads);
  torch::manual_seed(static_cast<uint64_t>(seed));
  peft::models::LoadOptions load;
  load.task = "causal_lm";
  peft::PeftModel model(peft::models::load_pretrained(model_dir, load));
  if (!adapter_dir.empty()) peft::checkpoint::load_adapter(model, adapter_dir);
  model.eval();
  auto tok = peft::tokenizers::load_tokenizer(tokenizer_dir.empty() ? model_dir : tokenizer_dir);
  std::vector<int64_t> ids = tok->encode(prompt);
  PEFT_CHECK(!ids.empty(), "cli", "the prompt encodes to no tokens");
  int64_t positions = model.base_model().config_json().value("n_positions", model.base_model().config_json().value(
                                                                              "max_position_embeddings", 1024));
  // Virtual tokens and prefixes take positions of their own.
  if (!adapter_dir.empty())
    if (auto prompt_encoder = model.prompt_encoder("default")) positions -= prompt_encoder->num_virtual_tokens();
  torch::NoGradGuard no_grad;
  std::vector<int64_t> generated;
  for (int64_t i = 0; i < max_new; ++i) {
    std::vector<int64_t> window(ids.end() - std::min<int64_t>(static_cast<int64_t>(ids.size()), positions), ids.end());
    peft::models::ModelInputs in;
    in.input_ids = torch::tensor(window, torch::kLong).unsqueeze(0);
    auto logits = model.forward(in).logits[0][-1];
    const int64_t next = pick(logits, temperature, top_p);
    if (tok->special().eos && next == *tok->special().eos) break;
    ids.push_back(next);
    generated.push_back(next);
  }
  // Decode the whole sequence: decoders that strip a leading space must see where text starts.
  const std::string before = tok->decode(std::vector<int64_t>(ids.begin(), ids.end() - generated.size()));
  const std::string all = tok->decode(ids);
  fmt::print("{}{}\n", prompt, all.compare(0, before.size(), before) == 0 ? all.substr(before.size()) : tok->decode(generated));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::apps::prepare_process(argv);
  return peft::apps::run_main("peft-generate", [&] { return run(argc, argv); });
}
