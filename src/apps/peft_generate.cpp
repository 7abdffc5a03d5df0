// peft-generate: text generation with a causal LM (optionally with a delta): greedy, or
// sampling with temperature, top-k and nucleus (top-p) filtering, a repetition penalty, with
// the key/value cache or recomputing the context each step (peft::generate).
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "peft/core/process.h"
#include "peft/checkpoint/delta.h"
#include "peft/core/error.h"
#include "peft/generate.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/tokenizers/tokenizer.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Generate text with a causal language model (and optionally a delta).", "peft-generate"};
  std::string model_dir, adapter_dir, prompt, tokenizer_dir;
  int64_t seed = 0;
  peft::GenerationConfig gen;
  int threads = 0;
  app.add_option("--model", model_dir, "causal LM directory (with its tokenizer)")->required();
  app.add_option("--adapter", adapter_dir, "delta directory to apply");
  app.add_option("--tokenizer", tokenizer_dir, "tokenizer directory (default: the model's)");
  app.add_option("--prompt", prompt, "text to continue")->required();
  app.add_option("--max-new-tokens", gen.max_new_tokens, "tokens to generate")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--temperature", gen.temperature, "0 = greedy; > 0 samples")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", gen.top_k, "sample among the k most likely tokens (0 = all; with --temperature > 0)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", gen.top_p, "nucleus sampling mass (with --temperature > 0)")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  std::vector<int64_t> stop_ids;
  app.add_option("--stop-token", stop_ids, "a token id that ends generation (repeatable; the tokenizer's end-of-text always does)");
  app.add_option("--repetition-penalty", gen.repetition_penalty, "> 1 discourages tokens already seen (1 = off)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  bool no_cache = false;
  app.add_flag("--no-cache", no_cache, "recompute the whole context every step (the reference; LST needs it)");
  app.add_option("--seed", seed, "sampling seed")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  peft::core::configure_threads(threads);
  gen.seed = static_cast<uint64_t>(seed);
  gen.use_cache = !no_cache;
  peft::models::LoadOptions load;
  load.task = "causal_lm";
  peft::PeftModel model(peft::models::load_pretrained(model_dir, load));
  if (!adapter_dir.empty()) peft::checkpoint::load_adapter(model, adapter_dir);
  auto tok = peft::tokenizers::load_tokenizer(tokenizer_dir.empty() ? model_dir : tokenizer_dir);
  std::vector<int64_t> ids = tok->encode(prompt);
  PEFT_CHECK(!ids.empty(), "cli", "the prompt encodes to no tokens");
  gen.stop_tokens = stop_ids;
  if (tok->special().eos) gen.stop_tokens.push_back(*tok->special().eos);
  const std::vector<int64_t> generated = peft::generate(model, ids, gen).tokens;
  ids.insert(ids.end(), generated.begin(), generated.end());
  // Decode the whole sequence: decoders that strip a leading space must see where text starts.
  const std::string before = tok->decode(std::vector<int64_t>(ids.begin(), ids.end() - generated.size()));
  const std::string all = tok->decode(ids);
  fmt::print("{}{}\n", prompt, all.compare(0, before.size(), before) == 0 ? all.substr(before.size()) : tok->decode(generated));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-generate", [&] { return run(argc, argv); });
}
