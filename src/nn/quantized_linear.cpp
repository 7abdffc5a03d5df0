#include "peft/nn/quantized_linear.h"

#include <torch/torch.h>

namespace peft::nn {
namespace {

struct WeightHolder : torch::CustomClassHolder {
  std::shared_ptr<const QuantizedWeight> weight;
  c10::ScalarType dtype = c10::kFloat;
};

struct QuantizedLinearFunction : torch::autograd::Function<QuantizedLinearFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, c10::intrusive_ptr<WeightHolder> holder,
                            const at::Tensor& x, const at::Tensor& bias) {
    at::Tensor w = holder->weight->dequantize(holder->dtype);
    ctx->saved_data["weight"] = c10::IValue::make_capsule(holder);
    return torch::nn::functional::linear(x, w, bias.to(holder->dtype));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto holder = c10::static_intrusive_pointer_cast<WeightHolder>(ctx->saved_data["weight"].toCapsule());
    const at::Tensor& g = grad_out[0];
    at::Tensor grad_x = torch::matmul(g, holder->weight->dequantize(g.scalar_type()));
    at::Tensor grad_b;
    if (ctx->needs_input_grad(1))  // edges count tensor inputs only: x is 0, bias 1
      grad_b = g.reshape({-1, g.size(-1)}).sum(0);
    return {at::Tensor(), grad_x, grad_b};
  }
};

}  // namespace

at::Tensor quantized_linear(const at::Tensor& x, const std::shared_ptr<const QuantizedWeight>& weight,
                            const at::Tensor& bias, c10::ScalarType compute_dtype) {
  auto holder = c10::make_intrusive<WeightHolder>();
  holder->weight = weight;
  holder->dtype = compute_dtype;
  // Always a bias (zeros when the layer has none): an undefined tensor argument has no device.
  const at::Tensor b = bias.defined() ? bias : torch::zeros({weight->shape.at(0)}, x.options().dtype(compute_dtype));
  return QuantizedLinearFunction::apply(holder, x.to(compute_dtype), b);
}

}  // namespace peft::nn
