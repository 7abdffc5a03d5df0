// Weight-only quantization: the NF4 table, each format's error bound, double quantization's
// extra error, and the bytes each format holds.
#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "peft/models/load.h"
#include "peft/nn/quantization.h"
#include "test_util.h"

namespace peft::test {
namespace {

TEST(Quantization, Nf4LevelsAreThePublishedTable) {
  // QLoRA (Dettmers et al. 2023), appendix E, as bitsandbytes ships it.
  const std::vector<double> published = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                                         -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                                         0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                                         0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                                         0.7229568362236023, 1.0};
  ASSERT_EQ(nn::nf4_levels().size(), published.size());
  for (size_t i = 0; i < published.size(); ++i) EXPECT_EQ(nn::nf4_levels()[i], static_cast<float>(published[i])) << i;
}

TEST(Quantization, Fp4LevelsAreBitsandbytesE2m1Table) {
  // Sign, two exponent bits (bias 3), one mantissa bit; exponent 0 is the subnormal ±0.0625;
  // normalized by the largest value, 12 (bitsandbytes' dequantization tree).
  for (int code = 0; code < 16; ++code) {
    const int sign = code >> 3, e = (code >> 1) & 3, m = code & 1;
    double v = e == 0 ? (m ? 0.0625 : 0.0) : std::pow(2.0, -e + 4) * (m ? 1.5 : 1.0);
    v = (sign ? -v : v) / 12.0;
    EXPECT_FLOAT_EQ(nn::fp4_levels()[static_cast<size_t>(code)], static_cast<float>(v)) << code;
  }
}

/// Half the widest gap between adjacent levels of a 4-bit table: the largest rounding error per
/// unit absmax.
double half_gap(nn::QuantType type) {
  auto levels = nn::levels_of(type);
  std::sort(levels.begin(), levels.end());
  double gap = 0;
  for (size_t i = 1; i < 16; ++i) gap = std::max(gap, double(levels[i] - levels[i - 1]));
  return gap / 2;
}
double nf4_half_gap() { return half_gap(nn::QuantType::kNF4); }

/// |w − dequantized| ≤ absmax · (half the widest level gap) per block, plus — with double
/// quantization — how far the stored absmax is from the block's true one (values beyond it clamp).
void expect_nf4_bound(const at::Tensor& w, const nn::QuantizedWeight& q) {
  const int64_t b = q.block_size, n = w.numel(), blocks = (n + b - 1) / b;
  at::Tensor flat = w.to(torch::kFloat).reshape({-1});
  at::Tensor padded = torch::cat({flat, torch::zeros({blocks * b - n})}).view({blocks, b});
  at::Tensor used = q.block_absmax(), truth = padded.abs().amax(1);
  at::Tensor per_block = used * (half_gap(q.type) + 1e-6) + (truth - used).abs() + 1e-7;
  at::Tensor err = (q.dequantize().reshape({-1}) - flat).abs();
  at::Tensor bound = per_block.repeat_interleave(b).narrow(0, 0, n);
  EXPECT_TRUE((err <= bound).all().item<bool>()) << "max excess " << (err - bound).max().item<double>();
}

TEST(Quantization, Nf4RoundTripStaysWithinHalfALevelGapPerBlock) {
  torch::manual_seed(0);
  for (auto shape : {std::vector<int64_t>{64, 128}, {7, 45}, {3, 1}}) {  // odd sizes: a partial last block
    at::Tensor w = torch::randn(shape) * 0.02;
    auto q = nn::quantize_nf4(w, /*double_quant=*/false);
    EXPECT_EQ(q.dequantize().sizes(), w.sizes());
    expect_nf4_bound(w, q);
    // Each block's largest weight is a level exactly (±1 · absmax).
    EXPECT_LE((q.dequantize().abs().max() - w.abs().max()).abs().item<double>(), 1e-7);
  }
}

TEST(Quantization, Fp4RoundTripStaysWithinHalfALevelGapAndPicksTheNearestLevel) {
  torch::manual_seed(4);
  for (auto shape : {std::vector<int64_t>{32, 128}, {5, 27}}) {
    at::Tensor w = torch::randn(shape) * 0.05;
    auto q = nn::quantize_4bit(w, nn::QuantType::kFP4, /*double_quant=*/false);
    EXPECT_EQ(q.type, nn::QuantType::kFP4);
    expect_nf4_bound(w, q);
    // Nearest: no other level of the block is closer than the chosen one.
    at::Tensor levels = torch::tensor(std::vector<float>(nn::fp4_levels().begin(), nn::fp4_levels().end()));
    const int64_t n = w.numel(), blocks = (n + 63) / 64;
    at::Tensor flat = w.reshape({-1});
    at::Tensor absmax = q.block_absmax().repeat_interleave(64).narrow(0, 0, n);
    at::Tensor normalized = flat / absmax;
    at::Tensor best = (normalized.unsqueeze(1) - levels.unsqueeze(0)).abs().amin(1);
    at::Tensor chosen = (q.dequantize().reshape({-1}) / absmax - normalized).abs();
    EXPECT_LE((chosen - best).max().item<double>(), 1e-6) << blocks;
  }
  auto dq = nn::quantize_4bit(torch::randn({64, 256}), nn::QuantType::kFP4, true);
  EXPECT_NEAR(8.0 * dq.bytes() / (64.0 * 256), nn::bits_per_weight(nn::QuantType::kFP4, true, 64, 256), 1e-9);
}

TEST(Quantization, Int8RoundTripStaysWithinHalfAStepPerRow) {
  torch::manual_seed(1);
  at::Tensor w = torch::randn({33, 70});
  auto q = nn::quantize_int8(w);
  at::Tensor step = w.abs().amax(1, true) / 127.0;
  EXPECT_TRUE(((q.dequantize() - w).abs() <= step * 0.5 + 1e-7).all().item<bool>());
  EXPECT_EQ(q.codes.scalar_type(), torch::kChar);
  EXPECT_EQ(q.bytes(), 33 * 70 + 33 * 4);
}

TEST(Quantization, DoubleQuantizationAddsABoundedError) {
  torch::manual_seed(2);
  at::Tensor w = torch::randn({256, 512}) * torch::rand({256, 1});  // block scales that vary
  auto single = nn::quantize_nf4(w, false), dq = nn::quantize_nf4(w, true);
  // The second level's error on each absmax is at most half its 8-bit step.
  at::Tensor step = dq.absmax_scale.repeat_interleave(nn::QuantizedWeight::kAbsmaxBlock).narrow(0, 0, single.absmax.numel());
  EXPECT_TRUE(((dq.block_absmax() - single.absmax).abs() <= step * 0.5 + 1e-7).all().item<bool>());
  // The codes are chosen against the absmax the second level returns.
  expect_nf4_bound(w, dq);
  const double rms_single = (single.dequantize() - w).pow(2).mean().sqrt().item<double>();
  const double rms_double = (dq.dequantize() - w).pow(2).mean().sqrt().item<double>();
  EXPECT_LE(rms_double, rms_single * 1.05);
}

TEST(Quantization, Nf4BytesFollowTheFormatsArithmetic) {
  at::Tensor w = torch::randn({1024, 1024});
  const double n = static_cast<double>(w.numel());
  EXPECT_NEAR(8.0 * nn::quantize_nf4(w, false).bytes() / n, 4.0 + 32.0 / 64, 1e-9);
  const double bits = 8.0 * nn::quantize_nf4(w, true).bytes() / n;
  EXPECT_NEAR(bits, 4.127, 0.02 * 4.127);  // 4 + 8/64 + 32/(64·256)
  EXPECT_NEAR(bits, nn::bits_per_weight(nn::QuantType::kNF4, true, 1024, 1024), 1e-9);
  EXPECT_NEAR(8.0 * nn::quantize_int8(w).bytes() / n, nn::bits_per_weight(nn::QuantType::kInt8, false, 1024, 1024), 1e-9);
}

TEST(Quantization, RealWeightsStayWithinTheBound) {
  auto model = models::load_pretrained(std::string(PEFT_SOURCE_DIR) + "/examples/models/tiny-gpt2-en");
  int checked = 0;
  for (auto& [name, lin] : model->adaptable_linears()) {
    at::Tensor w = lin->weight_out_in().contiguous();
    expect_nf4_bound(w, nn::quantize_nf4(w, true));
    ++checked;
  }
  EXPECT_GT(checked, 4);
}

TEST(Quantization, CpuDequantizationEqualsTheTensorOpPathBitForBit) {
  torch::manual_seed(6);
  at::Tensor w = torch::randn({37, 90}) * 0.1;  // a partial last block, an odd element count
  for (const auto dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf, torch::kDouble}) {
    for (const auto type : {nn::QuantType::kNF4, nn::QuantType::kFP4})
      for (bool dq : {false, true}) {
        auto q = nn::quantize_4bit(w, type, dq);
        EXPECT_TRUE(bit_equal(q.dequantize(dtype), q.dequantize_with_tensor_ops(dtype)))
            << nn::quant_type_name(type) << dq << " " << c10::toString(dtype);
      }
    auto q = nn::quantize_int8(w);
    EXPECT_TRUE(bit_equal(q.dequantize(dtype), q.dequantize_with_tensor_ops(dtype))) << c10::toString(dtype);
  }
  auto odd = nn::quantize_nf4(torch::randn({3, 5}), false);  // 15 weights: half a byte of padding
  EXPECT_TRUE(bit_equal(odd.dequantize(), odd.dequantize_with_tensor_ops()));
}

TEST(Quantization, CpuQuantizationGivesTheTensorOpPathsCodes) {
  torch::manual_seed(8);
  for (auto shape : {std::vector<int64_t>{37, 90}, {3, 5}, {64, 256}})
    for (const auto type : {nn::QuantType::kNF4, nn::QuantType::kFP4})
      for (bool dq : {false, true}) {
        at::Tensor w = torch::randn(shape) * 0.05;
        w.view({-1})[0] = 0.0;  // ties and exact levels
        auto a = nn::quantize_4bit(w, type, dq), b = nn::quantize_4bit_with_tensor_ops(w, type, dq);
        EXPECT_TRUE(bit_equal(a.codes, b.codes)) << nn::quant_type_name(type) << dq << " " << c10::str(w.sizes());
        EXPECT_TRUE(bit_equal(a.block_absmax(), b.block_absmax()));
      }
}

TEST(Quantization, BadInputsAreNamed) {
  EXPECT_NE(error_of([] { nn::quantize_nf4(torch::zeros({4}), false); }).find("[out, in]"), std::string::npos);
  EXPECT_NE(error_of([] { nn::quant_type_from_name("nf3", "quantization.type"); }).find("quantization.type"),
            std::string::npos);
  // An all-zero block quantizes to zeros, not NaN.
  EXPECT_TRUE(bit_equal(nn::quantize_nf4(torch::zeros({2, 64}), true).dequantize(), torch::zeros({2, 64})));
}

}  // namespace
}  // namespace peft::test
