// A quantized frozen base computes the function of the base whose weights are its dequantized
// tensors, and LoRA trains through it with the same gradients.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "peft/core/strings.h"
#include "peft/methods/method.h"
#include "peft/models/quantize.h"
#include "peft/nn/quantization.h"
#include "peft/train/trainer.h"
#include "peft/peft_model.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

/// Quantizes every projection of `quantized` but the heads (double quantization for the 4-bit
/// formats) and gives `reference` the dequantized weights, so both compute the same function.
void quantize_pair(models::PretrainedModel& quantized, models::PretrainedModel& reference, nn::QuantType type) {
  models::QuantizationConfig q;
  q.type = type;
  q.double_quant = type != nn::QuantType::kInt8;
  models::quantize_model(quantized, q);
  copy_dequantized_weights(quantized, reference);
}

TEST(QuantizedBase, ForwardEqualsTheDequantizedBaseOnEveryFamily) {
  for (const auto type : {nn::QuantType::kNF4, nn::QuantType::kInt8})
    for (const auto& family : tiny_families()) {
      auto q = tiny_model(family), ref = tiny_model(family);
      quantize_pair(*q, *ref, type);
      q->eval();
      ref->eval();
      auto a = q->forward(tiny_batch(family)), b = ref->forward(tiny_batch(family));
      EXPECT_LT(max_abs_diff(a.logits, b.logits), 1e-5) << family << " " << nn::quant_type_name(type);
      EXPECT_GT(max_abs_diff(a.logits, tiny_model(family)->forward(tiny_batch(family)).logits), 0.0)
          << "quantization changes the weights a little";
    }
}

TEST(QuantizedBase, LoraGradientsEqualThoseThroughTheDequantizedBase) {
  for (const auto& family : tiny_families()) {
    auto q = tiny_model(family), ref = tiny_model(family);
    quantize_pair(*q, *ref, nn::QuantType::kNF4);
    std::vector<std::vector<at::Tensor>> grads;
    for (auto base : {q, ref}) {
      PeftModel model(base);
      auto cfg = methods::parse_config({{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"bias", "all"},
                                        {"task_type", is_classifier(family) ? "SEQ_CLS" : "CAUSAL_LM"}});
      torch::manual_seed(5);  // the same LoRA init on both
      model.add_adapter("default", *cfg);
      {
        torch::NoGradGuard g;
        auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
        for (auto& p : model.trainable_parameters()) p.add_(torch::randn(p.sizes(), gen) * 0.05);
      }
      model.eval();
      model.forward(tiny_batch(family)).loss.backward();
      std::vector<at::Tensor> g;
      for (auto& p : model.trainable_parameters()) {
        EXPECT_TRUE(p.grad().defined()) << family << " " << c10::str(p.sizes());
        g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
      }
      grads.push_back(g);
    }
    ASSERT_EQ(grads[0].size(), grads[1].size());
    for (size_t i = 0; i < grads[0].size(); ++i)
      EXPECT_LE(max_abs_diff(grads[0][i], grads[1][i]), 1e-5 * (1 + grads[1][i].abs().max().item<double>()))
          << family << " " << i << " " << c10::str(grads[1][i].sizes());
  }
}

TEST(QuantizedBase, MergingIntoAQuantizedWeightIsRefusedByName) {
  auto base = tiny_model("llama");
  for (auto& [name, lin] : base->adaptable_linears())
    if (core::ends_with(name, "q_proj")) lin->quantize(nn::QuantType::kNF4, false, torch::kFloat);
  PeftModel model(base);
  model.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"q_proj"}}}));
  EXPECT_NE(error_of([&] { model.merge_adapter(); }).find("quantized (nf4)"), std::string::npos);
  auto copy = methods::parse_config({{"peft_type", "LORA"}, {"r", 2}, {"target_modules", {"v_proj"}},
                                     {"modules_to_save", {"model.layers.0.self_attn.q_proj"}}});
  EXPECT_NE(error_of([&] { model.add_adapter("other", *copy); }).find("stored quantized (nf4)"), std::string::npos);
  EXPECT_FALSE(model.has_adapter("other"));
}

TEST(QuantizedBase, QuantizesAndComputesOnCudaAsOnCpu_CUDA) {
  ASSERT_TRUE(torch::cuda::is_available());
  torch::manual_seed(3);
  at::Tensor w = torch::randn({96, 130}) * 0.05;
  for (const auto type : {nn::QuantType::kNF4, nn::QuantType::kFP4, nn::QuantType::kInt8}) {
    auto cpu = nn::quantize_weight(w, type, type != nn::QuantType::kInt8);
    auto gpu = nn::quantize_weight(w.cuda(), type, type != nn::QuantType::kInt8);
    // The devices' reductions round differently, so a weight on a level midpoint may flip.
    const double differ = (cpu.codes != gpu.codes.cpu()).to(torch::kFloat).mean().item<double>();
    EXPECT_LE(differ, 1e-3) << nn::quant_type_name(type);
    const at::Tensor d = (cpu.dequantize() - gpu.dequantize().cpu()).abs();
    EXPECT_LE(d.mean().item<double>(), 1e-4) << nn::quant_type_name(type);
  }
  // A whole quantized model on the device equals its CPU twin.
  auto cpu_model = tiny_model("llama"), gpu_model = tiny_model("llama");
  models::QuantizationConfig q;
  q.double_quant = true;
  models::quantize_model(*cpu_model, q);
  gpu_model->to(torch::kCUDA);
  models::quantize_model(*gpu_model, q);
  cpu_model->eval();
  gpu_model->eval();
  auto a = cpu_model->forward(tiny_batch("llama")).logits;
  auto b = gpu_model->forward(train::to_device(tiny_batch("llama"), torch::kCUDA)).logits.cpu();
  EXPECT_LT(max_abs_diff(a, b), 1e-3);
}

}  // namespace
}  // namespace peft::test
