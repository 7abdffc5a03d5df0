#include "peft/methods/prompt/prompt_learning.h"

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/strings.h"
#include "peft/core/json_io.h"
#include "peft/peft_model.h"

namespace peft::methods {

void PromptLearningFields::validate(const std::string& c) const {
  PEFT_CHECK(num_virtual_tokens > 0, c, "num_virtual_tokens must be positive, found {}", num_virtual_tokens);
  PEFT_CHECK(token_dim >= 0 && num_attention_heads >= 0 && num_layers >= 0, c,
             "token_dim, num_attention_heads and num_layers must be positive or null, found {}, {}, {}", token_dim,
             num_attention_heads, num_layers);
  PEFT_CHECK(num_transformer_submodules >= 0 && num_transformer_submodules <= 2, c,
             "num_transformer_submodules must be 1, 2 (encoder-decoders) or null, found {}", num_transformer_submodules);
}

void PromptLearningFields::resolve(const models::ModelGeometry& g, int64_t dim, int64_t heads, const std::string& c) {
  auto fill = [&](int64_t& field, int64_t expected, const char* key, const char* what) {
    PEFT_CHECK(field == 0 || field == expected, c, "{} is {}, but this model needs {} ({})", key, field, expected, what);
    field = expected;
  };
  fill(num_layers, g.prefix_layers(), "num_layers",
       g.encoder_decoder ? "its decoder's layer count" : "its layer count");
  if (num_transformer_submodules == 0) num_transformer_submodules = g.encoder_decoder ? 2 : 1;
  PEFT_CHECK(num_transformer_submodules == 1 || g.encoder_decoder, c,
             "num_transformer_submodules is {}, but this model has one transformer stack (1 expected)",
             num_transformer_submodules);
  fill(token_dim, dim, "token_dim", heads == g.num_heads ? "its hidden size" : "key/value heads x head_dim");
  fill(num_attention_heads, heads, "num_attention_heads",
       heads == g.num_heads ? "its attention heads" : "its key/value heads");
}

std::string prompt_parameter_role(const std::string& p) {
  return core::is_under(p, "prompt_encoder") && core::ends_with(p, ".embedding.weight") ? "prompt" : "";
}

at::TensorOptions base_tensor_options(PeftModel& model) {
  auto params = model.base_model().parameters();
  PEFT_CHECK(!params.empty(), "prompt", "the base model has no parameters");
  return params.front().options().requires_grad(false);
}

}  // namespace peft::methods
