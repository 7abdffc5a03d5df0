#include "peft/nn/activations.h"

#include <cmath>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {
namespace {

// HF's NewGELUActivation, written out so the float arithmetic follows the reference order.
at::Tensor gelu_new(const at::Tensor& x) {
  const double c = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + torch::tanh(c * (x + 0.044715 * torch::pow(x, 3.0))));
}

at::Tensor gelu_fast(const at::Tensor& x) {
  return 0.5 * x * (1.0 + torch::tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)));
}

const std::vector<std::pair<std::string, Activation>>& table() {
  static const std::vector<std::pair<std::string, Activation>> t = {
      {"gelu", [](const at::Tensor& x) { return torch::gelu(x); }},
      {"gelu_new", gelu_new},
      {"gelu_pytorch_tanh", [](const at::Tensor& x) { return torch::gelu(x, "tanh"); }},
      {"gelu_fast", gelu_fast},
      {"relu", [](const at::Tensor& x) { return torch::relu(x); }},
      {"silu", [](const at::Tensor& x) { return torch::silu(x); }},
      {"swish", [](const at::Tensor& x) { return torch::silu(x); }},
      {"tanh", [](const at::Tensor& x) { return torch::tanh(x); }},
      {"sigmoid", [](const at::Tensor& x) { return torch::sigmoid(x); }},
  };
  return t;
}

}  // namespace

Activation activation(const std::string& name) {
  std::string known;
  for (const auto& [n, f] : table()) {
    if (n == name) return f;
    known += (known.empty() ? "" : ", ") + n;
  }
  fail("nn", fmt::format("unknown activation function '{}' (supported: {})", name, known));
}

}  // namespace peft::nn
