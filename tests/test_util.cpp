#include "test_util.h"

#include <cstdlib>
#include <vector>

#include <torch/torch.h>

#include "peft/core/safetensors.h"

namespace peft::test {

models::ModelInputs fixture_inputs(const std::string& rel, bool hidden_states) {
  models::ModelInputs in;
  for (auto& [name, t] : safetensors::load_file(fixture(rel))) {
    if (name == "input_ids") in.input_ids = t;
    else if (name == "attention_mask") in.attention_mask = t;
    else if (name == "token_type_ids") in.token_type_ids = t;
    else if (name == "pixel_values") in.pixel_values = t;
    else if (name == "labels") in.labels = t;
    else ADD_FAILURE() << rel << ": unknown input " << name;
  }
  in.output_hidden_states = hidden_states;
  return in;
}

double max_output_diff(const models::ModelOutput& out, const std::string& ref_rel) {
  auto ref = safetensors::load_file(fixture(ref_rel));
  double worst = 0.0;
  auto check = [&](const std::string& name, const at::Tensor& ours) {
    if (!ours.defined()) return;
    auto it = ref.find(name);
    if (it == ref.end()) {
      if (name != "pooler_output") ADD_FAILURE() << ref_rel << " has no " << name;
      return;
    }
    worst = std::max(worst, max_abs_diff(ours, it->second));
  };
  check("logits", out.logits);
  check("last_hidden_state", out.last_hidden_state);
  check("pooler_output", out.pooler_output);
  // Encoder-decoders: the fixtures name the decoder's hidden states, and hold the loss.
  const bool seq2seq = out.encoder_last_hidden_state.defined();
  for (size_t i = 0; i < out.hidden_states.size(); ++i)
    check((seq2seq ? "decoder_hidden_states." : "hidden_states.") + std::to_string(i), out.hidden_states[i]);
  check("encoder_last_hidden_state", out.encoder_last_hidden_state);
  for (size_t i = 0; i < out.encoder_hidden_states.size(); ++i)
    check("encoder_hidden_states." + std::to_string(i), out.encoder_hidden_states[i]);
  if (ref.count("loss")) {
    if (!out.loss.defined()) ADD_FAILURE() << "no loss to compare with " << ref_rel;
    else check("loss", out.loss.reshape({-1}));
  }
  if (ref.count("pooler_output") && !out.pooler_output.defined()) ADD_FAILURE() << "no pooler_output to compare";
  return worst;
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "peft-test-XXXXXX").string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  char* p = ::mkdtemp(buf.data());
  if (p == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace peft::test
