// Activation functions by Hugging Face's names (config "activation_function" / "hidden_act").
#pragma once

#include <functional>
#include <string>

#include <ATen/core/Tensor.h>

namespace peft::nn {

using Activation = std::function<at::Tensor(const at::Tensor&)>;

/// gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish, tanh, sigmoid;
/// an unknown name is an error listing these.
Activation activation(const std::string& name);

}  // namespace peft::nn
