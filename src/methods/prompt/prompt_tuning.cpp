#include "peft/methods/prompt/prompt_tuning.h"

#include <torch/torch.h>

#include "prompt_fields.h"
#include "methods/config_fields.h"
#include "methods/method_helpers.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/peft_model.h"
#include "peft/tokenizers/tokenizer.h"

namespace peft::methods {
namespace {

constexpr const char* kC = "prompt_tuning";

void attach_prompt_tuning(PeftModel& model, MethodConfig& base_cfg, const std::string& adapter) {
  auto& cfg = dynamic_cast<PromptTuningConfig&>(base_cfg);
  const auto g = model.base_model().geometry();
  cfg.prompt.resolve(g, g.hidden_size, g.num_heads, kC);
  const auto opts = base_tensor_options(model);
  // HF's total_virtual_tokens: a block of p rows per transformer submodule.
  const int64_t p = cfg.prompt.num_virtual_tokens * cfg.prompt.num_transformer_submodules;
  at::Tensor table;
  if (cfg.common.inference_mode) {
    table = torch::zeros({p, g.hidden_size}, opts);  // the saved table replaces it
  } else {
    std::vector<int64_t> ids;
    if (cfg.prompt_tuning_init == "TEXT") {
      ids = tokenizers::load_tokenizer(cfg.tokenizer_name_or_path)->encode(cfg.prompt_tuning_init_text);
      PEFT_CHECK(!ids.empty(), kC, "prompt_tuning_init_text '{}' tokenizes to nothing", cfg.prompt_tuning_init_text);
    }
    at::Tensor words = cfg.prompt_tuning_init == "RANDOM" ? at::Tensor() : model.base_model().input_embeddings();
    PEFT_CHECK(cfg.prompt_tuning_init == "RANDOM" || words.defined(), kC,
               "prompt_tuning_init {} needs word embeddings, which a {} model does not have (use RANDOM)",
               cfg.prompt_tuning_init, model.base_model().model_type());
    table = initial_prompt(cfg.prompt_tuning_init, p, g.hidden_size, words, ids, opts);
  }
  torch::nn::Sequential none{nullptr};
  model.attach_prompt_encoder(adapter,
                              std::make_shared<nn::PromptEncoder>(table, none, nn::PromptPlacement::kInputEmbeddings, g,
                                                                  cfg.prompt.num_transformer_submodules));
  model.add_modules_to_save(adapter, cfg.prompt.modules_to_save);
}

int64_t count_prompt_tuning(const MethodConfig& base_cfg, const models::ModelGeometry& g) {
  auto cfg = dynamic_cast<const PromptTuningConfig&>(base_cfg);
  cfg.prompt.resolve(g, g.hidden_size, g.num_heads, kC);
  return cfg.prompt.num_virtual_tokens * cfg.prompt.num_transformer_submodules * g.hidden_size;
}

}  // namespace

at::Tensor initial_prompt(const std::string& init, int64_t p, int64_t hidden, const at::Tensor& word_embeddings,
                          const std::vector<int64_t>& token_ids, const at::TensorOptions& options) {
  torch::NoGradGuard no_grad;
  if (init == "RANDOM") return torch::randn({p, hidden}, options);
  const int64_t vocab = word_embeddings.size(0);
  at::Tensor rows;
  if (init == "SAMPLE_VOCAB") {
    rows = torch::randint(vocab, {p}, torch::TensorOptions().dtype(torch::kLong));
  } else {
    // HF: repeat the text's ids until there are p, then cut.
    std::vector<int64_t> ids;
    while (static_cast<int64_t>(ids.size()) < p) ids.insert(ids.end(), token_ids.begin(), token_ids.end());
    ids.resize(static_cast<size_t>(p));
    for (int64_t id : ids)
      PEFT_CHECK(id >= 0 && id < vocab, kC, "prompt_tuning_init_text: token id {} is outside the vocabulary ({})", id,
                 vocab);
    rows = torch::tensor(ids, torch::TensorOptions().dtype(torch::kLong));
  }
  return word_embeddings.index_select(0, rows.to(word_embeddings.device())).to(options).clone();
}

namespace {
const std::vector<ConfigField<PromptTuningConfig>>& prompt_tuning_fields() {
  using C = PromptTuningConfig;
  static const std::vector<ConfigField<C>> f = with_prompt_learning_fields<C>({
      field("prompt_tuning_init", &C::prompt_tuning_init),
      written_as(field("prompt_tuning_init_text", &C::prompt_tuning_init_text), [](const C& c, nlohmann::json& j) {
         j["prompt_tuning_init_text"] = or_null(c.prompt_tuning_init_text);
       }),
      written_as(field("tokenizer_name_or_path", &C::tokenizer_name_or_path), [](const C& c, nlohmann::json& j) {
         j["tokenizer_name_or_path"] = or_null(c.tokenizer_name_or_path);
       }),
      field("tokenizer_kwargs", &C::tokenizer_kwargs)});
  return f;
}
}  // namespace

std::shared_ptr<PromptTuningConfig> PromptTuningConfig::from_json(const nlohmann::json& j) {
  auto c = read_config(j, prompt_tuning_fields(), kC, "prompt tuning config");
  return c;
}

nlohmann::json PromptTuningConfig::to_json() const { return write_config(*this, prompt_tuning_fields()); }

void PromptTuningConfig::validate() const {
  prompt.validate(kC);
  const auto& i = prompt_tuning_init;
  PEFT_CHECK(i == "RANDOM" || i == "SAMPLE_VOCAB" || i == "TEXT", kC,
             "prompt_tuning_init must be RANDOM, SAMPLE_VOCAB or TEXT, found '{}'", i);
  if (i == "TEXT" && !common.inference_mode)
    PEFT_CHECK(!prompt_tuning_init_text.empty() && !tokenizer_name_or_path.empty(), kC,
               "prompt_tuning_init TEXT needs prompt_tuning_init_text and tokenizer_name_or_path (a tokenizer directory)");
  PEFT_CHECK(tokenizer_kwargs.is_null() || tokenizer_kwargs.empty(), kC,
             "tokenizer_kwargs are not supported (found {}); the tokenizer directory decides", tokenizer_kwargs.dump());
}

Method prompt_tuning_method() {
  Method m;
  m.name = "prompt_tuning";
  m.peft_type = "PROMPT_TUNING";
  m.parse = [](const nlohmann::json& j) -> std::shared_ptr<MethodConfig> { return PromptTuningConfig::from_json(j); };
  m.attach = attach_prompt_tuning;
  m.parameter_role = prompt_parameter_role;
  m.count = count_prompt_tuning;
  return m;
}

}  // namespace peft::methods
