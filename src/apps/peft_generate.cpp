// peft-generate: text generation with a causal LM or an encoder-decoder (optionally with a delta): greedy, or
// sampling with temperature, top-k and nucleus (top-p) filtering, a repetition penalty, with
// the key/value cache or recomputing the context each step (peft::generate).
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "peft/core/process.h"
#include "peft/checkpoint/delta.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/generate.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/tokenizers/tokenizer.h"
#include "peft/train/generation_eval.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Generate text with a causal language model or an encoder-decoder (and optionally a delta).",
               "peft-generate"};
  std::string model_dir, tokenizer_dir;
  std::vector<std::string> adapter_specs, prompts, per_prompt;
  int64_t seed = 0;
  peft::GenerationConfig gen;
  int threads = 0;
  app.add_option("--model", model_dir, "causal LM or encoder-decoder directory (with its tokenizer)")->required();
  app.add_option("--adapter", adapter_specs,
                 "delta to load: NAME=DIR, or DIR (named 'default'); repeatable, the first is active");
  app.add_option("--tokenizer", tokenizer_dir, "tokenizer directory (default: the model's)");
  app.add_option("--prompt", prompts, "text to continue, or an encoder-decoder's input (repeatable: one batch, each prompt on its own)")
      ->required();
  app.add_option("--adapter-per-prompt", per_prompt,
                 "one adapter name per prompt, comma-separated (__base__ = the bare base): a mixed-adapter batch")
      ->delimiter(',');
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
  load.task = peft::models::generation_task(peft::core::read_json_file(model_dir + "/config.json"));
  const bool encoder_decoder = load.task == "seq2seq_lm";
  peft::PeftModel model(peft::models::load_pretrained(model_dir, load));
  PEFT_CHECK(per_prompt.empty() || per_prompt.size() == prompts.size(), "cli",
             "--adapter-per-prompt names {} adapters for {} prompts (one per --prompt expected)", per_prompt.size(),
             prompts.size());
  peft::checkpoint::load_adapters(model, adapter_specs);
  gen.adapter_names = per_prompt;
  auto tok = peft::tokenizers::load_tokenizer(tokenizer_dir.empty() ? model_dir : tokenizer_dir);
  std::vector<std::vector<int64_t>> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ids.push_back(peft::encode_prompt(*tok, prompts[i], encoder_decoder));
    PEFT_CHECK(!ids.back().empty(), "cli", "--prompt {} encodes to no tokens", i + 1);
  }
  gen.stop_tokens = stop_ids;
  if (tok->special().eos) gen.stop_tokens.push_back(*tok->special().eos);
  const auto results = peft::generate_batch(model, ids, gen);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<int64_t>& generated = results[i].tokens;
    if (prompts.size() > 1)
      fmt::print("--- prompt {}{}\n", i + 1, per_prompt.empty() ? "" : " (" + per_prompt[i] + ")");
    if (encoder_decoder) {  // the answer alone: it does not continue the prompt
      fmt::print("{}\n", peft::train::decode_generated(*tok, generated));
      continue;
    }
    std::vector<int64_t> all_ids = ids[i];
    all_ids.insert(all_ids.end(), generated.begin(), generated.end());
    // Decode the whole sequence: decoders that strip a leading space must see where text starts.
    const std::string before = tok->decode(ids[i]);
    const std::string all = tok->decode(all_ids);
    fmt::print("{}{}\n", prompts[i],
               all.compare(0, before.size(), before) == 0 ? all.substr(before.size()) : tok->decode(generated));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-generate", [&] { return run(argc, argv); });
}
