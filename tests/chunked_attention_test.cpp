// Chunked attention is eager attention a block of query rows at a time: the same values and the
// same gradients (float64 to rounding, bf16 with the float32 softmax to its rounding), with
// several blocks, causal and padding masks, prefix keys, and only the inputs that need a gradient.
#include <torch/torch.h>

#include "peft/nn/attention.h"
#include "peft/nn/attention_mask.h"
#include "test_util.h"

namespace peft::test {
namespace {

struct Inputs {
  at::Tensor q, k, v, mask;
};

/// b=2, h=3, 7 queries over 9 keys (2 prefix keys always visible), head_dim 5, the second row
/// left-padded by 3.
Inputs draw(c10::ScalarType dtype, bool mask_per_query) {
  torch::manual_seed(7);
  auto o = torch::TensorOptions().dtype(torch::kDouble);
  Inputs in{torch::randn({2, 3, 7, 5}, o).to(dtype), torch::randn({2, 3, 9, 5}, o).to(dtype),
            torch::randn({2, 3, 9, 5}, o).to(dtype), {}};
  at::Tensor keep = torch::ones({2, 9}, torch::kLong);
  keep.index_put_({1, torch::indexing::Slice(2, 5)}, 0);
  in.mask = mask_per_query ? nn::causal_additive_mask(keep, 2, 7, 9, dtype, torch::kCPU)
                           : nn::additive_padding_mask(keep, dtype);
  return in;
}

nn::AttentionOptions options(bool upcast) {
  nn::AttentionOptions o;
  o.score_divisor = std::sqrt(5.0);
  o.softmax_in_float32 = upcast;
  return o;
}

struct Result {
  at::Tensor out, gq, gk, gv;
};

Result run(const Inputs& in, const nn::AttentionOptions& o, int64_t block_bytes, std::array<bool, 3> grad) {
  at::Tensor q = in.q.clone().requires_grad_(grad[0]), k = in.k.clone().requires_grad_(grad[1]),
             v = in.v.clone().requires_grad_(grad[2]);
  at::Tensor out = block_bytes > 0 ? nn::chunked_attention(q, k, v, in.mask, o, block_bytes)
                                   : nn::eager_attention(q, k, v, in.mask, o);
  // A weighted sum, so that every output element has its own upstream gradient.
  (out * torch::linspace(-1, 2, out.numel(), out.options()).view(out.sizes())).sum().backward();
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

TEST(ChunkedAttention, EqualsEagerAttentionInValuesAndGradients) {
  for (bool per_query : {true, false}) {
    const auto in = draw(torch::kDouble, per_query);
    const auto eager = run(in, options(false), 0, {true, true, true});
    // One row per block (2·3·9·8 bytes), three rows, and everything in one block.
    for (int64_t bytes : {int64_t{1}, int64_t{3 * 2 * 3 * 9 * 8}, int64_t{1} << 30}) {
      const auto chunked = run(in, options(false), bytes, {true, true, true});
      EXPECT_LT(max_abs_diff(chunked.out, eager.out), 1e-13) << per_query << " " << bytes;
      EXPECT_LT(max_abs_diff(chunked.gq, eager.gq), 1e-12) << per_query << " " << bytes;
      EXPECT_LT(max_abs_diff(chunked.gk, eager.gk), 1e-12) << per_query << " " << bytes;
      EXPECT_LT(max_abs_diff(chunked.gv, eager.gv), 1e-12) << per_query << " " << bytes;
    }
  }
}

TEST(ChunkedAttention, ComputesOnlyTheGradientsAskedFor) {
  const auto in = draw(torch::kDouble, true);
  const auto eager = run(in, options(false), 0, {true, true, true});
  const auto kv_only = run(in, options(false), 1, {false, true, true});
  EXPECT_FALSE(kv_only.gq.defined());
  EXPECT_LT(max_abs_diff(kv_only.gk, eager.gk), 1e-12);
  const auto v_only = run(in, options(false), 1, {false, false, true});
  EXPECT_FALSE(v_only.gk.defined());
  EXPECT_LT(max_abs_diff(v_only.gv, eager.gv), 1e-12);
  // No mask (vision models).
  const auto unmasked_eager = run({in.q, in.k, in.v, {}}, options(false), 0, {true, true, true});
  const auto unmasked = run({in.q, in.k, in.v, {}}, options(false), 1, {true, true, true});
  EXPECT_LT(max_abs_diff(unmasked.out, unmasked_eager.out), 1e-13);
  EXPECT_LT(max_abs_diff(unmasked.gq, unmasked_eager.gq), 1e-12);
  // Nothing needs a gradient: no graph, the same values.
  at::Tensor out = nn::chunked_attention(in.q, in.k, in.v, in.mask, options(false), 1);
  EXPECT_FALSE(out.requires_grad());
  EXPECT_LT(max_abs_diff(out, eager.out), 1e-13);
}

TEST(ChunkedAttention, MatchesEagerInBf16WithTheFloat32Softmax) {
  const auto in = draw(torch::kBFloat16, true);
  const auto eager = run(in, options(true), 0, {true, true, true});
  const auto chunked = run(in, options(true), 1, {true, true, true});
  EXPECT_EQ(chunked.out.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(chunked.gk.scalar_type(), torch::kBFloat16);
  // Each row's forward is eager's; key/value gradients are summed over blocks in float32 here and
  // inside one bf16 matmul there, so they agree to bf16 rounding of values of order 1.
  EXPECT_TRUE(bit_equal(chunked.out, eager.out));
  EXPECT_TRUE(bit_equal(chunked.gq, eager.gq));
  EXPECT_LT(max_abs_diff(chunked.gk.to(torch::kFloat), eager.gk.to(torch::kFloat)), 0.05);
  EXPECT_LT(max_abs_diff(chunked.gv.to(torch::kFloat), eager.gv.to(torch::kFloat)), 0.05);
}

TEST(ChunkedAttention, AppliesWithoutDropoutToUnbroadcastInputs) {
  const auto in = draw(torch::kDouble, true);
  auto o = options(false);
  EXPECT_TRUE(nn::chunked_attention_applies(in.q, in.k, in.v, in.mask, o));
  o.dropout = 0.1;
  EXPECT_TRUE(nn::chunked_attention_applies(in.q, in.k, in.v, in.mask, o));  // not training
  o.training = true;
  EXPECT_FALSE(nn::chunked_attention_applies(in.q, in.k, in.v, in.mask, o));
  EXPECT_FALSE(nn::chunked_attention_applies(in.q, in.k.narrow(0, 0, 1), in.v, in.mask, options(false)));
  EXPECT_FALSE(nn::chunked_attention_applies(in.q, in.k, in.v, in.mask.clone().requires_grad_(true), options(false)));
}

}  // namespace
}  // namespace peft::test
