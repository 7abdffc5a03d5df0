// P-tuning (Liu et al. 2021, "GPT Understands, Too"): the virtual tokens are produced by a
// prompt encoder — an MLP (Linear-ReLU-Linear-ReLU-Linear, HF's "MLP") or a bidirectional LSTM
// followed by Linear-ReLU-Linear ("LSTM") — from an embedding table, and prepended to the input
// embeddings like prompt tuning. The delta stores the encoder's output (HF's layout); the encoder
// itself exists only while training (and in the trainer's state).
#pragma once

#include <memory>
#include <string>

#include <torch/nn/modules/rnn.h>

#include "peft/methods/method.h"
#include "peft/methods/prompt/prompt_learning.h"

namespace peft::methods {

struct PTuningConfig : MethodConfig {
  PromptLearningFields prompt;
  std::string encoder_reparameterization_type = "MLP";  ///< MLP | LSTM
  int64_t encoder_hidden_size = 0;                      ///< 0: token_dim
  int64_t encoder_num_layers = 2;                       ///< LSTM layers (HF's MLP ignores it)
  double encoder_dropout = 0.0;                         ///< between LSTM layers

  std::string method() const override { return "p_tuning"; }
  std::string peft_type() const override { return "P_TUNING"; }
  nlohmann::json to_json() const override;
  void validate() const override;
  std::shared_ptr<MethodConfig> clone() const override { return std::make_shared<PTuningConfig>(*this); }
  static std::shared_ptr<PTuningConfig> from_json(const nlohmann::json& j);
};

/// A bidirectional LSTM over the p virtual tokens: [p, in] -> [p, 2 * hidden].
class BiLstmImpl : public torch::nn::Module {
 public:
  BiLstmImpl(int64_t in, int64_t hidden, int64_t layers, double dropout);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::LSTM lstm{nullptr};
};
TORCH_MODULE(BiLstm);

Method p_tuning_method();

}  // namespace peft::methods
