// Hugging Face's common `_init_weights` rule, shared by the families that use it unchanged.
#pragma once

#include <torch/nn/module.h>

namespace peft::models {

/// Linear / Conv2d / Embedding weights ~ N(0, std²) (an Embedding's padding row zeroed), biases 0,
/// LayerNorm and RMSNorm weights 1. Other parameters are left to the caller.
void init_standard(torch::nn::Module& root, double std);

/// True while load_pretrained builds a model whose weights it is about to read: constructors then
/// skip the random init (untouched tensors cost no resident memory), and the loader initializes
/// only when the checkpoint lacks a tensor (a new head).
bool weights_will_be_loaded();
class WeightsWillBeLoaded {
 public:
  WeightsWillBeLoaded();
  ~WeightsWillBeLoaded();
  WeightsWillBeLoaded(const WeightsWillBeLoaded&) = delete;
  WeightsWillBeLoaded& operator=(const WeightsWillBeLoaded&) = delete;

 private:
  bool previous_;
};

/// Marks every parameter frozen: backbones are loaded frozen; methods opt tensors back in.
void freeze_all(torch::nn::Module& root);

}  // namespace peft::models
