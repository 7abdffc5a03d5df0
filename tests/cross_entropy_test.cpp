// The chunked cross-entropy equals torch's on the upcast logits: loss and gradient, ignored rows,
// several chunks, float64 exactly and bf16 to its rounding.
#include <cmath>

#include <torch/torch.h>

#include "peft/nn/cross_entropy.h"
#include "test_util.h"

namespace peft::test {
namespace {

namespace F = torch::nn::functional;

std::pair<at::Tensor, at::Tensor> reference(const at::Tensor& logits, const at::Tensor& targets) {
  at::Tensor x = logits.detach().clone().requires_grad_(true);
  const bool half = x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kHalf;
  at::Tensor loss = F::cross_entropy(half ? x.to(torch::kFloat) : x, targets, F::CrossEntropyFuncOptions().ignore_index(-100));
  loss.backward();
  return {loss.detach(), x.grad()};
}

std::pair<at::Tensor, at::Tensor> chunked(const at::Tensor& logits, const at::Tensor& targets) {
  at::Tensor x = logits.detach().clone().requires_grad_(true);
  at::Tensor loss = nn::chunked_cross_entropy(x, targets);
  (loss * 1.0).backward();
  return {loss.detach(), x.grad()};
}

TEST(ChunkedCrossEntropy, EqualsTorchsOnTheUpcastLogits) {
  torch::manual_seed(0);
  const int64_t n = 100, vocab = 70000;  // 29 rows per chunk: four chunks, the last partial
  at::Tensor targets = torch::randint(0, vocab, {n}, torch::kLong);
  targets.narrow(0, 10, 7).fill_(-100);
  at::Tensor logits = torch::randn({n, vocab}, torch::kDouble) * 3;
  auto [ref_loss, ref_grad] = reference(logits, targets);
  auto [loss, grad] = chunked(logits, targets);
  EXPECT_NEAR(loss.item<double>(), ref_loss.item<double>(), 1e-12);
  EXPECT_LE(max_abs_diff(grad, ref_grad), 1e-15);
  EXPECT_TRUE(bit_equal(grad.narrow(0, 10, 7), torch::zeros({7, vocab}, torch::kDouble))) << "ignored rows";

  at::Tensor half = logits.to(torch::kBFloat16);
  auto [hr_loss, hr_grad] = reference(half, targets);
  auto [h_loss, h_grad] = chunked(half, targets);
  EXPECT_EQ(h_loss.scalar_type(), torch::kFloat);
  EXPECT_NEAR(h_loss.item<double>(), hr_loss.item<double>(), 1e-5 * std::abs(hr_loss.item<double>()));
  EXPECT_EQ(h_grad.scalar_type(), torch::kBFloat16);
  // Both round the same float32 gradient to bf16; summation order may move it by one step.
  const at::Tensor step = hr_grad.to(torch::kFloat).abs() * (1.0 / 128) + 1e-12;
  EXPECT_TRUE(((h_grad.to(torch::kFloat) - hr_grad.to(torch::kFloat)).abs() <= step).all().item<bool>());
}

TEST(ChunkedCrossEntropy, NoValidRowIsNanAndBadShapesAreNamed) {
  at::Tensor t = torch::full({3}, -100, torch::kLong);
  EXPECT_TRUE(std::isnan(nn::chunked_cross_entropy(torch::randn({3, 5}).to(torch::kBFloat16), t).item<double>()));
  EXPECT_NE(error_of([] { nn::chunked_cross_entropy(torch::randn({3}), torch::zeros({3}, torch::kLong)); }).find("[N, V]"),
            std::string::npos);
}

}  // namespace
}  // namespace peft::test
