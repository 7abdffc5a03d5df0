#include "peft/models/quantize.h"

#include <map>
#include <set>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "peft/core/dtype.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/strings.h"
#include "peft/models/model.h"
#include "peft/nn/module_dtype.h"

namespace peft::models {
namespace {
constexpr const char* kC = "quantization";

bool skipped(const std::string& module, const std::vector<std::string>& skip) {
  for (const auto& s : skip)
    if (core::is_or_ends_with_segment(module, s) || core::is_under(module, s)) return true;
  return false;
}
}  // namespace

QuantizationConfig QuantizationConfig::from_json(const nlohmann::json& j, const std::string& where) {
  PEFT_CHECK(j.is_object(), kC, "{}: quantization must be an object like {{\"type\": \"nf4\"}}, found {}", where,
             j.dump());
  core::reject_unknown_keys(j, {"type", "double_quant", "compute_dtype", "skip_modules"}, kC, where + " quantization");
  QuantizationConfig c;
  PEFT_CHECK(j.contains("type"), kC, "{}: quantization.type is required (int8, nf4 or fp4)", where);
  c.type = nn::quant_type_from_name(core::get_or<std::string>(j, "type", "", kC, where), where + ": quantization.type");
  c.double_quant = core::get_or<bool>(j, "double_quant", false, kC, where);
  PEFT_CHECK(!(c.double_quant && c.type == nn::QuantType::kInt8), kC,
             "{}: quantization.double_quant applies to nf4 and fp4 (int8 keeps one float32 absmax per row)", where);
  if (const auto dt = core::dtype_from_name(core::get_or<std::string>(j, "compute_dtype", "", kC, where),
                                            where + ": quantization.compute_dtype"))
    c.compute_dtype = *dt;
  if (j.contains("skip_modules") && !j["skip_modules"].is_null())
    c.skip_modules = core::get_or<std::vector<std::string>>(j, "skip_modules", {}, kC, where);
  return c;
}

nlohmann::json QuantizationConfig::to_json() const {
  nlohmann::json j = {{"type", nn::quant_type_name(type)},
                      {"double_quant", double_quant},
                      {"compute_dtype", core::dtype_name(compute_dtype)}};
  j["skip_modules"] = skip_modules ? nlohmann::json(*skip_modules) : nlohmann::json(nullptr);
  return j;
}

std::vector<std::pair<std::string, nn::AdaptableLinear>> layers_to_quantize(PretrainedModel& model,
                                                                            const QuantizationConfig& config) {
  std::set<std::string> tied;
  for (const auto& [a, b] : model.tied_weights()) {
    tied.insert(a);
    tied.insert(b);
  }
  const auto skip = config.skip_modules.value_or(model.head_modules());
  const auto& fresh = model.newly_initialized();
  std::vector<std::pair<std::string, nn::AdaptableLinear>> out;
  for (auto& [name, lin] : model.adaptable_linears())
    if (!tied.count(name + ".weight") && !fresh.count(name + ".weight") && !skipped(name, skip))
      out.emplace_back(name, lin);
  return out;
}

std::vector<std::string> linears_to_quantize(PretrainedModel& model, const QuantizationConfig& config) {
  std::vector<std::string> out;
  for (const auto& [name, lin] : layers_to_quantize(model, config)) out.push_back(name);
  return out;
}

void quantize_model(PretrainedModel& model, const QuantizationConfig& config) {
  for (auto& [name, lin] : layers_to_quantize(model, config))
    if (!lin->quantized()) lin->quantize(config.type, config.double_quant, config.compute_dtype);
  nn::to_floating_dtype(model, config.compute_dtype);
}

QuantizedStorage quantized_storage(PretrainedModel& model) {
  QuantizedStorage s;
  std::map<std::string, int64_t> formats;
  for (const auto& [name, lin] : model.adaptable_linears()) {
    const auto* q = lin->quantized_weight();
    if (!q) continue;
    ++s.layers;
    s.weights += q->numel();
    s.bytes += q->bytes();
    ++formats[nn::quant_type_name(q->type) + (q->double_quant() ? " (double quant)" : "")];
  }
  for (const auto& [f, n] : formats) s.formats += (s.formats.empty() ? "" : ", ") + f;
  return s;
}

}  // namespace peft::models
