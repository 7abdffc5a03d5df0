// peft-forward: runs a model (optionally with a delta, optionally merged) on inputs stored by
// Hugging Face's argument names and writes outputs by HF's names, for parity checks against
// any other implementation.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/error.h"
#include "peft/core/safetensors.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/core/dtype.h"
#include "peft/core/process.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Run a model (and optionally a PEFT delta) on saved inputs; write logits and hidden states.",
               "peft-forward"};
  std::string model_dir, adapter_dir, inputs_path, out_path, compare_path, dtype, device = "cpu", task;
  bool merge = false, allow_extra = false;
  int threads = 0;
  int64_t num_labels = 0;
  app.add_option("--model", model_dir, "Hugging Face model directory (config.json + model.safetensors)")->required();
  app.add_option("--adapter", adapter_dir, "delta directory (adapter_config.json + adapter_model.safetensors)");
  app.add_flag("--merge", merge, "merge the delta into the base weights before running");
  app.add_option("--inputs", inputs_path,
                 "safetensors file with inputs by HF's names: input_ids, attention_mask, token_type_ids, "
                 "position_ids (text), pixel_values (vision); labels, decoder_input_ids, decoder_attention_mask "
                 "(encoder-decoders)")
      ->required();
  app.add_option("--out", out_path,
                 "output safetensors: logits, last_hidden_state, pooler_output (where the model has one), "
                 "hidden_states.<i>; encoder-decoders: encoder_last_hidden_state, encoder_hidden_states.<i>, "
                 "decoder_hidden_states.<i>; loss when labels are given")
      ->required();
  app.add_option("--task", task,
                 "head to build: causal_lm | sequence_classification | image_classification | seq2seq_lm | feature_extraction "
                 "(default: config.json's architectures)");
  app.add_option("--num-labels", num_labels, "label count of a classification head (default: config.json's)");
  app.add_flag("--allow-extra-tensors", allow_extra, "ignore (and report) checkpoint tensors the model does not use");
  app.add_option("--dtype", dtype, "compute dtype: float32 | bfloat16 | float16 | float64 (default: the file's)");
  app.add_option("--device", device, "cpu or cuda[:N]");
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  app.add_option("--compare", compare_path,
                 "reference outputs: print the max abs difference of every tensor they share with ours");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  peft::core::configure_threads(threads);
  PEFT_CHECK(!merge || !adapter_dir.empty(), "cli", "--merge needs --adapter");

  peft::models::LoadOptions load;
  load.dtype = peft::core::dtype_from_name(dtype, "--dtype");
  load.device = c10::Device(device);
  load.task = task;
  load.allow_extra_tensors = allow_extra;
  if (num_labels > 0) load.num_labels = num_labels;
  auto base = peft::models::load_pretrained(model_dir, load);
  peft::PeftModel model(base);
  if (!adapter_dir.empty()) {
    peft::checkpoint::load_adapter(model, adapter_dir);
    if (merge) model.merge_adapter();
  }
  model.eval();

  peft::safetensors::File in(inputs_path);
  peft::models::ModelInputs inputs;
  for (const auto& t : in.tensors()) {
    at::Tensor v = in.load(t.name).to(load.device);
    if (t.name == "input_ids") inputs.input_ids = v.to(torch::kLong);
    else if (t.name == "attention_mask") inputs.attention_mask = v;
    else if (t.name == "token_type_ids") inputs.token_type_ids = v.to(torch::kLong);
    else if (t.name == "position_ids") inputs.position_ids = v.to(torch::kLong);
    else if (t.name == "pixel_values") inputs.pixel_values = v;
    else if (t.name == "labels") inputs.labels = v.is_floating_point() ? v : v.to(torch::kLong);
    else if (t.name == "decoder_input_ids") inputs.decoder_input_ids = v.to(torch::kLong);
    else if (t.name == "decoder_attention_mask") inputs.decoder_attention_mask = v;
    else
      peft::fail("cli", fmt::format("{}: input '{}' is not a model input (expected input_ids, attention_mask, "
                                    "token_type_ids, position_ids, pixel_values, labels, decoder_input_ids or "
                                    "decoder_attention_mask)",
                                    inputs_path, t.name));
  }
  PEFT_CHECK(inputs.input_ids.defined() || inputs.pixel_values.defined(), "cli",
             "{}: missing 'input_ids' (text models) or 'pixel_values' (vision models)", inputs_path);
  inputs.output_hidden_states = true;

  torch::NoGradGuard no_grad;
  auto out = model.forward(inputs);
  peft::safetensors::TensorMap result;
  auto f32 = [](const at::Tensor& t) { return t.to(torch::kCPU, torch::kFloat).contiguous(); };
  if (out.logits.defined()) result["logits"] = f32(out.logits);
  result["last_hidden_state"] = f32(out.last_hidden_state);
  if (out.pooler_output.defined()) result["pooler_output"] = f32(out.pooler_output);
  // Encoder-decoders: the decoder's hidden states and the encoder's, under HF's output names.
  const bool seq2seq = out.encoder_last_hidden_state.defined();
  for (size_t i = 0; i < out.hidden_states.size(); ++i)
    result[(seq2seq ? "decoder_hidden_states." : "hidden_states.") + std::to_string(i)] = f32(out.hidden_states[i]);
  if (seq2seq) result["encoder_last_hidden_state"] = f32(out.encoder_last_hidden_state);
  for (size_t i = 0; i < out.encoder_hidden_states.size(); ++i)
    result["encoder_hidden_states." + std::to_string(i)] = f32(out.encoder_hidden_states[i]);
  if (out.loss.defined()) result["loss"] = f32(out.loss.reshape({-1}));
  peft::safetensors::save_file(out_path, result);
  if (!compare_path.empty()) {
    peft::safetensors::File ref(compare_path);
    double worst = 0.0;
    for (const auto& [name, ours] : result) {
      if (!ref.contains(name)) continue;
      auto theirs = ref.load(name).to(torch::kFloat);
      PEFT_CHECK(theirs.sizes() == ours.sizes(), "cli", "{}: '{}' has shape {}, ours {}", compare_path, name,
                 c10::str(theirs.sizes()), c10::str(ours.sizes()));
      const double d = (ours.to(torch::kDouble) - theirs.to(torch::kDouble)).abs().max().item<double>();
      worst = std::max(worst, d);
      fmt::print("{{\"tensor\": \"{}\", \"max_abs_diff\": {:.3e}}}\n", name, d);
    }
    fmt::print("{{\"tensor\": \"*\", \"max_abs_diff\": {:.3e}}}\n", worst);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-forward", [&] { return run(argc, argv); });
}
