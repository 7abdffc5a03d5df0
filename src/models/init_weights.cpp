#include "init_weights.h"

#include <torch/torch.h>

#include "peft/nn/layer_norm.h"
#include "peft/nn/adaptable_linear.h"
#include "peft/nn/rms_norm.h"

namespace peft::models {

void init_standard(torch::nn::Module& root, double std) {
  torch::NoGradGuard no_grad;
  for (auto& module : root.modules(/*include_self=*/false)) {
    if (auto lin = std::dynamic_pointer_cast<nn::AdaptableLinearImpl>(module)) {
      lin->weight.normal_(0.0, std);
      if (lin->bias.defined()) lin->bias.zero_();
    } else if (auto conv = std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(module)) {
      conv->weight.normal_(0.0, std);
      if (conv->bias.defined()) conv->bias.zero_();
    } else if (auto emb = std::dynamic_pointer_cast<torch::nn::EmbeddingImpl>(module)) {
      emb->weight.normal_(0.0, std);
      if (auto pad = emb->options.padding_idx()) emb->weight[*pad].zero_();
    } else if (auto ln = std::dynamic_pointer_cast<nn::LayerNormImpl>(module)) {
      if (ln->weight.defined()) ln->weight.fill_(1.0);
      if (ln->bias.defined()) ln->bias.zero_();
    } else if (auto rms = std::dynamic_pointer_cast<nn::RMSNormImpl>(module)) {
      rms->weight.fill_(1.0);
    }
  }
}

namespace {
thread_local bool t_weights_will_be_loaded = false;
}

bool weights_will_be_loaded() { return t_weights_will_be_loaded; }
WeightsWillBeLoaded::WeightsWillBeLoaded() : previous_(t_weights_will_be_loaded) { t_weights_will_be_loaded = true; }
WeightsWillBeLoaded::~WeightsWillBeLoaded() { t_weights_will_be_loaded = previous_; }

void freeze_all(torch::nn::Module& root) {
  for (auto& p : root.parameters()) p.set_requires_grad(false);
}

}  // namespace peft::models
