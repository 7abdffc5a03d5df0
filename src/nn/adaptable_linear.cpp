#include "peft/nn/adaptable_linear.h"

#include <algorithm>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/nn/per_sample.h"
#include "peft/nn/quantized_linear.h"

namespace peft::nn {

AdaptableLinearImpl::AdaptableLinearImpl(const AdaptableLinearOptions& options)
    : in_features_(options.in_features()), out_features_(options.out_features()), fan_in_fan_out_(options.fan_in_fan_out()) {
  const int64_t in_features = in_features_, out_features = out_features_;
  const bool fan_in_fan_out = fan_in_fan_out_;
  PEFT_CHECK(in_features > 0 && out_features > 0, "nn",
             "AdaptableLinear expects positive sizes, found in={} out={}", in_features, out_features);
  weight = register_parameter(
      "weight", fan_in_fan_out ? torch::empty({in_features, out_features}) : torch::empty({out_features, in_features}),
      false);
  if (options.bias()) bias = register_parameter("bias", torch::zeros({out_features}), false);
}

at::Tensor AdaptableLinearImpl::weight_out_in() const {
  if (quantized_) return quantized_->dequantize(compute_dtype_);
  return fan_in_fan_out_ ? weight.t() : weight;
}

at::Tensor AdaptableLinearImpl::weight_values() const {
  if (!quantized_) return weight;
  return fan_in_fan_out_ ? weight_out_in().t().contiguous() : weight_out_in();
}

void AdaptableLinearImpl::quantize(QuantType type, bool double_quant, c10::ScalarType compute_dtype) {
  quantize_from(weight, type, double_quant, compute_dtype);
}

void AdaptableLinearImpl::quantize_from(const at::Tensor& source, QuantType type, bool double_quant,
                                        c10::ScalarType compute_dtype) {
  PEFT_CHECK(!quantized_, "nn", "layer is already quantized ({})", quant_type_name(quantized_->type));
  PEFT_CHECK(merged_.empty(), "nn", "unmerge every adapter before quantizing a layer");
  PEFT_CHECK(source.sizes() == weight.sizes(), "nn", "quantizing from a weight of shape {}, expected {}",
             c10::str(source.sizes()), c10::str(weight.sizes()));
  PEFT_CHECK(c10::isFloatingType(compute_dtype), "nn", "compute dtype must be floating-point, found {}",
             c10::toString(compute_dtype));
  torch::NoGradGuard no_grad;
  original_identity_ = core::tensor_identity(source);
  const at::Tensor w = (fan_in_fan_out_ ? source.t() : source).contiguous();
  quantized_ = std::make_shared<const QuantizedWeight>(quantize_weight(w, type, double_quant));
  compute_dtype_ = compute_dtype;
  weight.set_data(torch::empty({0}, weight.options().dtype(compute_dtype).device(source.device())));
  if (bias.defined()) bias.set_data(bias.to(source.device(), compute_dtype));
}

template <typename Change>
RequantizationError AdaptableLinearImpl::change_weight(Change&& change) {
  if (!quantized_) {
    at::Tensor w = weight_out_in();  // a view: the change lands in the weight
    change(w);
    return {};
  }
  at::Tensor w = quantized_->dequantize(torch::kFloat);
  change(w);
  auto requantized = std::make_shared<const QuantizedWeight>(quantized_->requantized(w));
  at::Tensor error = requantized->dequantize(torch::kFloat) - w;
  RequantizationError e;
  e.layers = 1;
  e.weights = w.numel();
  e.max_abs = error.abs().max().item<double>();
  e.rms = error.pow(2).mean().sqrt().item<double>();
  e.weight_rms = w.pow(2).mean().sqrt().item<double>();
  quantized_ = std::move(requantized);
  return e;
}

at::Tensor AdaptableLinearImpl::base_forward(const at::Tensor& x) const { return project(x, {}, {}); }

at::Tensor AdaptableLinearImpl::project(const at::Tensor& x, const at::Tensor& weight_override,
                                        const at::Tensor& bias_override) const {
  at::Tensor y = project_unrecorded(x, weight_override, bias_override);
  if (per_sample_recording()) {  // a trained copy of the weight (modules_to_save) or bias (BitFit)
    if (!quantized_)
      record_per_sample(fan_in_fan_out_ ? PerSampleRule::kLinearInOut : PerSampleRule::kLinear, y, x,
                        weight_override.defined() ? weight_override : weight);
    record_per_sample(PerSampleRule::kBias, y, {}, bias_override.defined() ? bias_override : bias);
  }
  return y;
}

at::Tensor AdaptableLinearImpl::project_unrecorded(const at::Tensor& x, const at::Tensor& weight_override,
                                                   const at::Tensor& bias_override) const {
  const at::Tensor& b = bias_override.defined() ? bias_override : bias;
  if (!weight_override.defined()) {
    if (quantized_) return quantized_linear(x, quantized_, b, compute_dtype_);
    if (!fan_in_fan_out_) return torch::nn::functional::linear(x, weight, b);
  }
  const at::Tensor& w = weight_override.defined() ? weight_override : weight;
  if (!fan_in_fan_out_) return torch::nn::functional::linear(x, w, b);
  // Conv1D layout: x @ W (+ b) without materializing a transpose.
  auto out = b.defined() ? torch::addmm(b, x.reshape({-1, in_features_}), w) : torch::mm(x.reshape({-1, in_features_}), w);
  auto shape = x.sizes().vec();
  shape.back() = out_features_;
  return out.view(shape);
}

at::Tensor AdaptableLinearImpl::forward_groups(const at::Tensor& x) {
  int64_t rows = 0;
  for (const auto& g : groups_) rows += g.rows.numel();
  PEFT_CHECK(x.dim() >= 2 && x.size(0) == rows, "nn",
             "a mixed-adapter batch of {} rows reached a projection with input of shape {} (rows along dim 0 expected)",
             rows, c10::str(x.sizes()));
  at::Tensor y = base_forward(x);
  for (const auto& g : groups_) {
    const auto d = g.adapter.empty() ? nullptr : delta(g.adapter);
    PEFT_CHECK(!(d && merged(g.adapter)), "nn", "adapter '{}' is merged into this layer; unmerge it to mix adapters",
               g.adapter);
    const bool own_tensors = g.weight.defined() || g.bias.defined();
    if (!d && !own_tensors) continue;  // these rows keep the base projection
    const at::Tensor xg = x.index_select(0, g.rows);
    const bool own_projection = own_tensors || d->adapts_input();  // d is set when !own_tensors
    if (!own_projection) {
      // An additive delta adds to the shared projection's rows (no copy of them).
      const at::Tensor added = d->added_output(xg, y.scalar_type());
      if (added.defined()) {
        y = add_to_rows(std::move(y), g.rows, added);
        continue;
      }
    }
    at::Tensor yg = own_projection ? project(d ? d->adapt_input(xg) : xg, g.weight, g.bias) : y.index_select(0, g.rows);
    if (d) yg = d->adapt_output(xg, yg);
    y = put_rows(std::move(y), g.rows, yg);
  }
  return y;
}

at::Tensor AdaptableLinearImpl::forward(const at::Tensor& x) {
  if (!groups_.empty()) return forward_groups(x);
  if (active_.empty()) return base_forward(x);
  std::vector<LinearDelta*> run;
  for (const auto& [name, d] : deltas_)
    if (!merged_.count(name) && std::find(active_.begin(), active_.end(), name) != active_.end())
      run.push_back(d.get());
  at::Tensor h = x;
  for (auto* d : run) h = d->adapt_input(h);
  at::Tensor y = base_forward(h);
  for (auto* d : run) y = d->adapt_output(x, y);
  return y;
}

void AdaptableLinearImpl::add_delta(const std::string& adapter, std::shared_ptr<LinearDelta> delta) {
  PEFT_CHECK(!this->delta(adapter), "nn", "layer already has a delta for adapter '{}'", adapter);
  register_module(adapter, delta);
  deltas_.emplace_back(adapter, std::move(delta));
}

void AdaptableLinearImpl::remove_delta(const std::string& adapter, bool keep_merged_weights) {
  PEFT_CHECK(keep_merged_weights || !merged(adapter), "nn",
             "adapter '{}' is merged into this layer; unmerge it first", adapter);
  merged_.erase(adapter);
  auto it = std::find_if(deltas_.begin(), deltas_.end(), [&](const auto& p) { return p.first == adapter; });
  if (it == deltas_.end()) return;
  unregister_module(adapter);
  deltas_.erase(it);
  active_.erase(std::remove(active_.begin(), active_.end(), adapter), active_.end());
}

std::shared_ptr<LinearDelta> AdaptableLinearImpl::delta(const std::string& adapter) const {
  for (const auto& [name, d] : deltas_)
    if (name == adapter) return d;
  return nullptr;
}

std::vector<std::string> AdaptableLinearImpl::adapters() const {
  std::vector<std::string> out;
  for (const auto& p : deltas_) out.push_back(p.first);
  return out;
}

void AdaptableLinearImpl::set_active(const std::vector<std::string>& adapters) { active_ = adapters; }

RequantizationError AdaptableLinearImpl::merge(const std::string& adapter, bool requantize) {
  auto d = delta(adapter);
  PEFT_CHECK(d != nullptr, "nn", "no delta for adapter '{}' on this layer", adapter);
  PEFT_CHECK(!merged(adapter), "nn", "adapter '{}' is already merged", adapter);
  PEFT_CHECK(d->mergeable(), "nn", "adapter '{}' ({}) cannot be merged", adapter, d->name());
  PEFT_CHECK(!quantized_ || requantize, "nn",
             "adapter '{}': this layer's weight is quantized ({}); merge with requantization (lossy), or load the "
             "base unquantized to merge exactly",
             adapter, quant_type_name(quantized_ ? quantized_->type : QuantType::kNF4));
  torch::NoGradGuard no_grad;
  const RequantizationError e = change_weight([&](at::Tensor& w) { d->merge_into(w, bias); });
  merged_.insert(adapter);
  return e;
}

RequantizationError AdaptableLinearImpl::unmerge(const std::string& adapter, bool requantize) {
  PEFT_CHECK(merged(adapter), "nn", "adapter '{}' is not merged", adapter);
  PEFT_CHECK(!quantized_ || requantize, "nn",
             "adapter '{}': this layer's weight is quantized ({}); unmerging requantizes it (lossy): ask for it",
             adapter, quant_type_name(quantized_ ? quantized_->type : QuantType::kNF4));
  torch::NoGradGuard no_grad;
  const RequantizationError e = change_weight([&](at::Tensor& w) { delta(adapter)->unmerge_from(w, bias); });
  merged_.erase(adapter);
  return e;
}

}  // namespace peft::nn
