#include "peft/nn/quantization.h"

#include <algorithm>
#include <cmath>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::nn {
namespace {
constexpr const char* kC = "quantization";

at::Tensor levels_tensor(QuantType type, const at::Device& device) {
  const auto& levels = levels_of(type);
  return torch::tensor(std::vector<float>(levels.begin(), levels.end()),
                       at::TensorOptions().dtype(torch::kFloat).device(device));
}

void check_matrix(const at::Tensor& w) {
  PEFT_CHECK(w.defined() && w.dim() == 2 && w.is_floating_point() && w.numel() > 0, kC,
             "expected a non-empty floating-point [out, in] weight, found {}",
             w.defined() ? c10::str(w.sizes(), " ", w.scalar_type()) : "none");
}
}  // namespace

QuantType quant_type_from_name(const std::string& name, const std::string& what) {
  if (name == "int8") return QuantType::kInt8;
  if (name == "nf4") return QuantType::kNF4;
  if (name == "fp4") return QuantType::kFP4;
  fail(kC, fmt::format("{}: unknown quantization '{}' (expected int8, nf4 or fp4)", what, name));
}

std::string quant_type_name(QuantType type) {
  switch (type) {
    case QuantType::kInt8: return "int8";
    case QuantType::kNF4: return "nf4";
    case QuantType::kFP4: return "fp4";
  }
  return "?";
}

const std::array<float, 16>& nf4_levels() {
  // The quantiles of N(0, 1) normalized to [-1, 1], with an exact zero (the paper's construction).
  static const std::array<float, 16> levels = {
      -1.0f,
      -0.6961928009986877f,
      -0.5250730514526367f,
      -0.39491748809814453f,
      -0.28444138169288635f,
      -0.18477343022823334f,
      -0.09105003625154495f,
      0.0f,
      0.07958029955625534f,
      0.16093020141124725f,
      0.24611230194568634f,
      0.33791524171829224f,
      0.44070982933044434f,
      0.5626170039176941f,
      0.7229568362236023f,
      1.0f};
  return levels;
}

const std::array<float, 16>& fp4_levels() {
  // Code bits: sign, two exponent bits, one mantissa bit; 0b0001 is the subnormal 0.0625 / 12.
  static const std::array<float, 16> levels = {
      0.0f, 0.0625f / 12, 8.0f / 12, 1.0f, 4.0f / 12, 6.0f / 12, 2.0f / 12, 3.0f / 12,
      -0.0f, -0.0625f / 12, -8.0f / 12, -1.0f, -4.0f / 12, -6.0f / 12, -2.0f / 12, -3.0f / 12};
  return levels;
}

const std::array<float, 16>& levels_of(QuantType type) {
  PEFT_CHECK(type != QuantType::kInt8, kC, "int8 has no 4-bit level table");
  return type == QuantType::kFP4 ? fp4_levels() : nf4_levels();
}

double bits_per_weight(QuantType type, bool double_quant, int64_t out, int64_t in, int64_t block_size) {
  const double n = static_cast<double>(out) * static_cast<double>(in);
  if (type == QuantType::kInt8) return 8.0 + 32.0 * static_cast<double>(out) / n;
  const double blocks = std::ceil(n / static_cast<double>(block_size));
  const double packed = 8.0 * std::ceil(n / 2.0);
  const double scales = double_quant ? 8.0 * blocks + 32.0 * std::ceil(blocks / QuantizedWeight::kAbsmaxBlock) + 32.0
                                     : 32.0 * blocks;
  return (packed + scales) / n;
}

at::Tensor QuantizedWeight::block_absmax() const {
  if (!double_quant()) return absmax;
  const int64_t blocks = absmax_codes.numel();
  at::Tensor scale = absmax_scale.repeat_interleave(kAbsmaxBlock).narrow(0, 0, blocks);
  return absmax_codes.to(torch::kFloat) * scale + absmax_offset;
}

namespace {
// CPU: one pass over the codes writing the compute dtype directly (the tensor-op path below
// makes five passes through int64 and float32 intermediates). Same float32 products, same
// rounding to `dtype`, so both paths give identical values.
at::Tensor dequantize_4bit_cpu(const QuantizedWeight& q, const at::Tensor& absmax, c10::ScalarType dtype) {
  const int64_t n = q.numel(), bs = q.block_size, blocks = absmax.numel();
  const auto& levels = levels_of(q.type);
  at::Tensor out = torch::empty({q.shape.at(0), q.shape.at(1)}, at::TensorOptions().dtype(dtype));
  const at::Tensor codes = q.codes.contiguous();
  const at::Tensor scale = absmax.to(torch::kFloat).contiguous();
  const uint8_t* c = codes.data_ptr<uint8_t>();
  const float* a = scale.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "dequantize_4bit", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, 64, [&](int64_t begin, int64_t end) {
      scalar_t value[16];  // this block's 16 possible weights, each rounded once
      for (int64_t b = begin; b < end; ++b) {
        const float m = a[b];
        for (int k = 0; k < 16; ++k) value[k] = static_cast<scalar_t>(levels[static_cast<size_t>(k)] * m);
        const int64_t first = b * bs, last = std::min(first + bs, n);
        const int64_t pairs_end = first + (last - first) / 2 * 2;
        for (int64_t i = first; i < pairs_end; i += 2) {
          const uint8_t byte = c[i / 2];
          o[i] = value[byte >> 4];
          o[i + 1] = value[byte & 15];
        }
        if (pairs_end < last) o[pairs_end] = value[c[pairs_end / 2] >> 4];
      }
    });
  });
  return out;
}

at::Tensor dequantize_int8_cpu(const QuantizedWeight& q, c10::ScalarType dtype) {
  const int64_t rows = q.shape.at(0), cols = q.shape.at(1);
  at::Tensor out = torch::empty({rows, cols}, at::TensorOptions().dtype(dtype));
  const at::Tensor codes = q.codes.contiguous();
  const at::Tensor scale = q.absmax.to(torch::kFloat).contiguous();
  const int8_t* c = codes.data_ptr<int8_t>();
  const float* a = scale.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "dequantize_int8", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        for (int64_t j = 0; j < cols; ++j)
          o[r * cols + j] = static_cast<scalar_t>(static_cast<float>(c[r * cols + j]) * a[r]);
    });
  });
  return out;
}
}  // namespace

at::Tensor QuantizedWeight::dequantize(c10::ScalarType dtype) const {
  if (!codes.is_cpu()) return dequantize_with_tensor_ops(dtype);
  return type == QuantType::kInt8 ? dequantize_int8_cpu(*this, dtype) : dequantize_4bit_cpu(*this, block_absmax(), dtype);
}

at::Tensor QuantizedWeight::dequantize_with_tensor_ops(c10::ScalarType dtype) const {
  const int64_t out = shape.at(0), in = shape.at(1);
  if (type == QuantType::kInt8) return (codes.to(torch::kFloat) * absmax.unsqueeze(1)).to(dtype);
  // Unpack: the high nibble holds the even position.
  at::Tensor packed = codes.to(torch::kLong);
  at::Tensor high = torch::div(packed, 16, "floor");
  at::Tensor idx = torch::stack({high, packed - high * 16}, 1).reshape({-1});
  const int64_t n = out * in, padded = (n + block_size - 1) / block_size * block_size;
  at::Tensor values = levels_tensor(type, codes.device()).index_select(0, idx);
  if (values.numel() < padded) values = torch::cat({values, torch::zeros({padded - values.numel()}, values.options())});
  values = values.narrow(0, 0, padded).view({-1, block_size}) * block_absmax().unsqueeze(1);
  return values.reshape({-1}).narrow(0, 0, n).view({out, in}).to(dtype);
}

int64_t QuantizedWeight::bytes() const {
  int64_t n = 0;
  for (const auto* t : {&codes, &absmax, &absmax_codes, &absmax_scale})
    if (t->defined()) n += static_cast<int64_t>(t->numel() * t->element_size());
  return n + (double_quant() ? static_cast<int64_t>(sizeof(float)) : 0);  // the offset
}

void RequantizationError::add(const RequantizationError& o) {
  const double n = static_cast<double>(weights), m = static_cast<double>(o.weights);
  if (weights + o.weights > 0) {
    rms = std::sqrt((rms * rms * n + o.rms * o.rms * m) / (n + m));
    weight_rms = std::sqrt((weight_rms * weight_rms * n + o.weight_rms * o.weight_rms * m) / (n + m));
  }
  layers += o.layers;
  weights += o.weights;
  max_abs = std::max(max_abs, o.max_abs);
}

QuantizedWeight quantize_int8(const at::Tensor& weight) {
  check_matrix(weight);
  torch::NoGradGuard no_grad;
  QuantizedWeight q;
  q.type = QuantType::kInt8;
  q.shape = weight.sizes().vec();
  at::Tensor w = weight.to(torch::kFloat);
  at::Tensor absmax = w.abs().amax(1) / 127.0;  // the scale of one code step
  q.absmax = absmax;
  at::Tensor safe = torch::where(absmax > 0, absmax, torch::ones_like(absmax));
  q.codes = torch::round(w / safe.unsqueeze(1)).clamp(-127, 127).to(torch::kChar);
  return q;
}

QuantizedWeight quantize_nf4(const at::Tensor& weight, bool double_quant, int64_t block_size) {
  return quantize_4bit(weight, QuantType::kNF4, double_quant, block_size);
}

QuantizedWeight quantize_weight(const at::Tensor& weight, QuantType type, bool double_quant) {
  return type == QuantType::kInt8 ? quantize_int8(weight) : quantize_4bit(weight, type, double_quant);
}

QuantizedWeight QuantizedWeight::requantized(const at::Tensor& weight) const {
  return type == QuantType::kInt8 ? quantize_int8(weight) : quantize_4bit(weight, type, double_quant(), block_size);
}

namespace {
/// `loops`: the CPU loops; otherwise tensor ops (any device).
QuantizedWeight quantize_4bit_impl(const at::Tensor& weight, QuantType type, bool double_quant, int64_t block_size,
                                   bool loops) {
  check_matrix(weight);
  PEFT_CHECK(type != QuantType::kInt8, kC, "quantize_4bit expects nf4 or fp4, found int8");
  PEFT_CHECK(block_size > 0 && block_size % 2 == 0, kC, "{} block size must be positive and even, found {}",
             quant_type_name(type), block_size);
  torch::NoGradGuard no_grad;
  QuantizedWeight q;
  q.type = type;
  q.shape = weight.sizes().vec();
  q.block_size = block_size;
  const int64_t n = weight.numel(), blocks = (n + block_size - 1) / block_size;
  // CPU: one pass per step over float32 rows, no int64 intermediates (the tensor ops below hold
  // ~20 bytes per weight at once); the same float32 arithmetic, so both give the same codes.
  at::Tensor flat = weight.to(torch::kFloat).contiguous().reshape({-1});
  at::Tensor grouped;
  at::Tensor absmax;
  if (loops) {
    absmax = torch::empty({blocks}, flat.options());
    const float* w = flat.data_ptr<float>();
    float* a = absmax.data_ptr<float>();
    at::parallel_for(0, blocks, 256, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        float m = 0.0f;
        for (int64_t i = b * block_size, last = std::min(i + block_size, n); i < last; ++i) m = std::max(m, std::abs(w[i]));
        a[b] = m;
      }
    });
  } else {
    if (blocks * block_size > n) flat = torch::cat({flat, torch::zeros({blocks * block_size - n}, flat.options())});
    grouped = flat.view({blocks, block_size});
    absmax = grouped.abs().amax(1);
  }
  if (double_quant) {
    // The second level: absmax − mean, 8-bit symmetric per 256 blocks; the codes quantize what
    // that level gives back, so the two errors do not add up.
    q.absmax_offset = absmax.mean().item<double>();
    at::Tensor centered = absmax - q.absmax_offset;
    const int64_t groups = (blocks + QuantizedWeight::kAbsmaxBlock - 1) / QuantizedWeight::kAbsmaxBlock;
    at::Tensor padded = torch::cat({centered, torch::zeros({groups * QuantizedWeight::kAbsmaxBlock - blocks}, centered.options())})
                            .view({groups, QuantizedWeight::kAbsmaxBlock});
    at::Tensor scale = padded.abs().amax(1) / 127.0;
    q.absmax_scale = scale;
    at::Tensor safe = torch::where(scale > 0, scale, torch::ones_like(scale));
    q.absmax_codes = torch::round(padded / safe.unsqueeze(1)).clamp(-127, 127).to(torch::kChar).reshape({-1}).narrow(0, 0, blocks).contiguous();
    absmax = q.block_absmax();
  } else {
    q.absmax = absmax;
  }
  at::Tensor safe = torch::where(absmax > 0, absmax, torch::ones_like(absmax)).contiguous();
  // Nearest level: the interval between consecutive midpoints of the sorted table, mapped back
  // to its code (FP4's table is not in value order; its -0 code is never produced).
  at::Tensor levels = levels_tensor(type, weight.device());
  at::Tensor order = torch::argsort(levels);
  if (type == QuantType::kFP4) order = order.index_select(0, torch::nonzero(order != 8).reshape({-1}));
  at::Tensor sorted = levels.index_select(0, order);
  const int64_t m = sorted.numel();
  at::Tensor midpoints = (sorted.narrow(0, 0, m - 1) + sorted.narrow(0, 1, m - 1)) / 2;
  const int64_t even = (n + 1) / 2 * 2;
  if (loops) {
    const at::Tensor mids = midpoints.contiguous(), codes_of = order.to(torch::kLong).contiguous();
    const float* mid = mids.data_ptr<float>();
    const int64_t* code_of = codes_of.data_ptr<int64_t>();
    const int64_t bounds = mids.numel();
    const float* w = flat.data_ptr<float>();
    const float* a = safe.data_ptr<float>();
    q.codes = torch::empty({even / 2}, at::TensorOptions().dtype(torch::kByte));
    uint8_t* out = q.codes.data_ptr<uint8_t>();
    auto code = [&](int64_t i) -> uint8_t {
      // Past the end: the padding's zero, as the tensor path pads.
      const float x = i >= n ? 0.0f : std::min(1.0f, std::max(-1.0f, w[i] / a[i / block_size]));
      int64_t k = 0;  // torch.bucketize (right=False): the number of midpoints below x
      while (k < bounds && mid[k] < x) ++k;
      return static_cast<uint8_t>(code_of[k]);
    };
    at::parallel_for(0, even / 2, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) out[j] = static_cast<uint8_t>(code(2 * j) * 16 + code(2 * j + 1));
    });
    return q;
  }
  at::Tensor normalized = (grouped / safe.unsqueeze(1)).clamp(-1.0, 1.0).reshape({-1});
  at::Tensor idx = order.index_select(0, torch::bucketize(normalized, midpoints))
                       .narrow(0, 0, std::min(even, normalized.numel()));
  if (idx.numel() < even) idx = torch::cat({idx, torch::zeros({even - idx.numel()}, idx.options())});
  at::Tensor pairs = idx.view({-1, 2});
  q.codes = (pairs.select(1, 0) * 16 + pairs.select(1, 1)).to(torch::kByte).contiguous();
  return q;
}
}  // namespace

QuantizedWeight quantize_4bit(const at::Tensor& weight, QuantType type, bool double_quant, int64_t block_size) {
  return quantize_4bit_impl(weight, type, double_quant, block_size, /*loops=*/weight.is_cpu());
}

QuantizedWeight quantize_4bit_with_tensor_ops(const at::Tensor& weight, QuantType type, bool double_quant,
                                              int64_t block_size) {
  return quantize_4bit_impl(weight, type, double_quant, block_size, /*loops=*/false);
}

}  // namespace peft::nn
