// Weight-only quantization of a frozen [out, in] weight: int8 (symmetric, an absmax per output
// row) and the 4-bit formats NF4 (QLoRA's NormalFloat) and FP4 (bitsandbytes' e2m1 table):
// blocks of 64 consecutive weights of the row-major weight — along the input dimension — each
// with its absmax; two codes per byte, the first in the high nibble, as bitsandbytes packs them.
// Optional double quantization of the 4-bit absmax values: their mean removed, then 8 bits per
// value, symmetric, with a float32 scale per block of 256 (4 + 8/64 + 32/(64·256) = 4.127 bits
// per weight).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace peft::nn {

enum class QuantType { kInt8, kNF4, kFP4 };

/// "int8" | "nf4" | "fp4"; anything else is an error naming `what`.
QuantType quant_type_from_name(const std::string& name, const std::string& what);
std::string quant_type_name(QuantType type);

/// The 16 NF4 levels in code order (Dettmers et al. 2023, appendix E; bitsandbytes' table).
const std::array<float, 16>& nf4_levels();
/// The 16 FP4 levels in code order (bitsandbytes' e2m1 values divided by their maximum, 12).
const std::array<float, 16>& fp4_levels();
/// The level table of a 4-bit type (an error for int8).
const std::array<float, 16>& levels_of(QuantType type);
/// Bits per weight a format stores for an [out, in] weight (codes, scales, the second level).
double bits_per_weight(QuantType type, bool double_quant, int64_t out, int64_t in, int64_t block_size = 64);

struct QuantizedWeight {
  QuantType type = QuantType::kNF4;
  std::vector<int64_t> shape;  ///< [out, in]
  int64_t block_size = 64;     ///< 4-bit: weights per absmax
  at::Tensor codes;            ///< int8 [out, in] | uint8 [ceil(numel / 2)] (two 4-bit codes per byte)
  at::Tensor absmax;           ///< float32: int8 [out]; 4-bit [blocks] (undefined with double quantization)
  // 4-bit double quantization of absmax: absmax ≈ absmax_codes · absmax_scale[block / 256] + absmax_offset.
  at::Tensor absmax_codes;     ///< int8 [blocks]
  at::Tensor absmax_scale;     ///< float32 [ceil(blocks / 256)]
  double absmax_offset = 0.0;
  static constexpr int64_t kAbsmaxBlock = 256;

  bool double_quant() const { return absmax_codes.defined(); }
  int64_t numel() const { return shape.empty() ? 0 : shape[0] * shape[1]; }
  /// The per-block (4-bit) or per-row (int8) absmax, dequantized from the second level if need be.
  at::Tensor block_absmax() const;
  /// The weight as [out, in] in `dtype` (float32 products of level and absmax, then rounded to
  /// `dtype`). On CPU one pass over the codes; elsewhere dequantize_with_tensor_ops.
  at::Tensor dequantize(c10::ScalarType dtype = c10::kFloat) const;
  /// The same values through device-independent tensor ops (what CUDA runs).
  at::Tensor dequantize_with_tensor_ops(c10::ScalarType dtype = c10::kFloat) const;
  /// Bytes held (codes, absmax and the second level).
  int64_t bytes() const;
  /// The same weight quantized again in this format (a merge's requantization).
  QuantizedWeight requantized(const at::Tensor& weight) const;
};

/// What requantizing a changed weight (a merge into a quantized layer) costs: the requantized
/// weight against the exact dequantized-plus-delta one.
struct RequantizationError {
  int64_t layers = 0;
  double max_abs = 0.0;
  double rms = 0.0;         ///< root mean square of the error over every weight
  double weight_rms = 0.0;  ///< root mean square of the exact merged weights (the scale of `rms`)
  int64_t weights = 0;
  /// Accumulates another layer's error.
  void add(const RequantizationError& other);
};

/// Quantizes `weight` ([out, in], any floating dtype, on any device; computed in float32).
QuantizedWeight quantize_int8(const at::Tensor& weight);
QuantizedWeight quantize_nf4(const at::Tensor& weight, bool double_quant, int64_t block_size = 64);
/// A 4-bit format (NF4 or FP4) by type. On CPU, loops over float32 rows; elsewhere tensor ops.
QuantizedWeight quantize_4bit(const at::Tensor& weight, QuantType type, bool double_quant, int64_t block_size = 64);
/// The tensor-op path on any device (the CPU loops must give its codes).
QuantizedWeight quantize_4bit_with_tensor_ops(const at::Tensor& weight, QuantType type, bool double_quant,
                                              int64_t block_size = 64);
/// Any format by type (`double_quant` applies to the 4-bit ones).
QuantizedWeight quantize_weight(const at::Tensor& weight, QuantType type, bool double_quant);

}  // namespace peft::nn
