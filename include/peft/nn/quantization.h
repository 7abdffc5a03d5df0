// Weight-only quantization of a frozen [out, in] weight: int8 (symmetric, an absmax per output
// row) and NF4 (QLoRA's 4-bit NormalFloat: blocks of 64 consecutive weights of the row-major
// weight — along the input dimension — each with its absmax; two codes per byte, the first in
// the high nibble, as bitsandbytes packs them), with optional double quantization of the NF4
// absmax values: their mean removed, then 8 bits per value, symmetric, with a float32 scale per
// block of 256 (4 + 8/64 + 32/(64·256) = 4.127 bits per weight).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace peft::nn {

enum class QuantType { kInt8, kNF4 };

/// "int8" | "nf4"; anything else is an error naming `what`.
QuantType quant_type_from_name(const std::string& name, const std::string& what);
std::string quant_type_name(QuantType type);

/// The 16 NF4 levels in code order (Dettmers et al. 2023, appendix E; bitsandbytes' table).
const std::array<float, 16>& nf4_levels();

struct QuantizedWeight {
  QuantType type = QuantType::kNF4;
  std::vector<int64_t> shape;  ///< [out, in]
  int64_t block_size = 64;     ///< NF4: weights per absmax
  at::Tensor codes;            ///< int8 [out, in] | uint8 [ceil(numel / 2)] (two NF4 codes per byte)
  at::Tensor absmax;           ///< float32: int8 [out]; NF4 [blocks] (undefined with double quantization)
  // NF4 double quantization of absmax: absmax ≈ absmax_codes · absmax_scale[block / 256] + absmax_offset.
  at::Tensor absmax_codes;     ///< int8 [blocks]
  at::Tensor absmax_scale;     ///< float32 [ceil(blocks / 256)]
  double absmax_offset = 0.0;
  static constexpr int64_t kAbsmaxBlock = 256;

  bool double_quant() const { return absmax_codes.defined(); }
  int64_t numel() const { return shape.empty() ? 0 : shape[0] * shape[1]; }
  /// The per-block (NF4) or per-row (int8) absmax, dequantized from the second level if need be.
  at::Tensor block_absmax() const;
  /// The weight as [out, in] in `dtype`.
  at::Tensor dequantize(c10::ScalarType dtype = c10::kFloat) const;
  /// Bytes held (codes, absmax and the second level).
  int64_t bytes() const;
};

/// Quantizes `weight` ([out, in], any floating dtype, on any device; computed in float32).
QuantizedWeight quantize_int8(const at::Tensor& weight);
QuantizedWeight quantize_nf4(const at::Tensor& weight, bool double_quant, int64_t block_size = 64);

}  // namespace peft::nn
