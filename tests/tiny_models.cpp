#include "tiny_models.h"

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include "peft/core/error.h"
#include "peft/models/load.h"

namespace peft::test {

const std::vector<std::string>& tiny_families() {
  static const std::vector<std::string> f = {"gpt2", "bert", "roberta", "llama", "vit"};
  return f;
}

bool is_classifier(const std::string& family) { return family == "bert" || family == "roberta" || family == "vit"; }

nlohmann::json tiny_config(const std::string& family) {
  if (family == "gpt2")
    return {{"model_type", "gpt2"}, {"vocab_size", 61}, {"n_positions", 32}, {"n_embd", 32}, {"n_layer", 2},
            {"n_head", 4},          {"resid_pdrop", 0.0}, {"embd_pdrop", 0.0}, {"attn_pdrop", 0.0}};
  if (family == "bert" || family == "roberta") {
    nlohmann::json j = {{"model_type", family}, {"vocab_size", 61}, {"hidden_size", 24}, {"num_hidden_layers", 2},
                        {"num_attention_heads", 3}, {"intermediate_size", 40}, {"max_position_embeddings", 34},
                        {"hidden_dropout_prob", 0.0}, {"attention_probs_dropout_prob", 0.0}, {"num_labels", 3},
                        {"architectures", {family == "bert" ? "BertForSequenceClassification"
                                                           : "RobertaForSequenceClassification"}}};
    j["pad_token_id"] = family == "bert" ? 0 : 1;
    j["type_vocab_size"] = family == "bert" ? 2 : 1;
    return j;
  }
  if (family == "llama")
    return {{"model_type", "llama"}, {"vocab_size", 61}, {"hidden_size", 24}, {"num_hidden_layers", 2},
            {"num_attention_heads", 6}, {"num_key_value_heads", 2}, {"intermediate_size", 40},
            {"max_position_embeddings", 64}, {"rope_theta", 500.0}, {"rms_norm_eps", 1e-5}};
  if (family == "vit")
    return {{"model_type", "vit"}, {"hidden_size", 24}, {"num_hidden_layers", 2}, {"num_attention_heads", 3},
            {"intermediate_size", 40}, {"image_size", 12}, {"patch_size", 4}, {"num_channels", 2}, {"num_labels", 5},
            {"architectures", {"ViTForImageClassification"}}};
  if (family == "t5")  // gated-GELU, untied head, a deeper decoder than encoder
    return {{"model_type", "t5"}, {"vocab_size", 61}, {"d_model", 24}, {"d_kv", 6}, {"d_ff", 40}, {"num_layers", 2},
            {"num_decoder_layers", 3}, {"num_heads", 4}, {"relative_attention_num_buckets", 8},
            {"relative_attention_max_distance", 20}, {"dropout_rate", 0.0}, {"layer_norm_epsilon", 1e-6},
            {"feed_forward_proj", "gated-gelu"}, {"tie_word_embeddings", false}, {"pad_token_id", 0},
            {"eos_token_id", 1}, {"decoder_start_token_id", 0}, {"architectures", {"T5ForConditionalGeneration"}}};
  throw std::invalid_argument("unknown tiny family " + family);
}

nlohmann::json tiny_dropout(const std::string& family) {
  if (family == "gpt2") return {{"resid_pdrop", 0.1}, {"embd_pdrop", 0.1}, {"attn_pdrop", 0.1}};
  if (family == "llama") return {{"attention_dropout", 0.1}};
  if (family == "t5") return {{"dropout_rate", 0.1}};
  return {{"hidden_dropout_prob", 0.1}, {"attention_probs_dropout_prob", 0.1}};
}

std::shared_ptr<models::PretrainedModel> tiny_model(const std::string& family, c10::ScalarType dtype, uint64_t seed,
                                                    const nlohmann::json& overrides) {
  torch::manual_seed(seed);
  auto config = tiny_config(family);
  if (overrides.is_object()) config.update(overrides);
  auto model = models::create_model(config);
  torch::NoGradGuard g;
  for (auto& p : model->parameters()) p.add_(torch::randn_like(p) * 0.02);
  model->to(dtype);
  return model;
}

namespace {
class RandomBlocks final : public data::Dataset {
 public:
  explicit RandomBlocks(int64_t n) : n_(n) {}
  int64_t size() const override { return n_; }
  models::ModelInputs batch(const std::vector<int64_t>& idx) const override {
    std::vector<at::Tensor> rows;
    for (auto i : idx) {
      auto g = at::make_generator<at::CPUGeneratorImpl>(1000 + i);
      rows.push_back(torch::randint(0, 61, {12}, g, torch::kLong));
    }
    models::ModelInputs in;
    in.input_ids = torch::stack(rows);
    in.labels = in.input_ids;
    return in;
  }
  std::string describe() const override { return "random blocks"; }

 private:
  int64_t n_;
};

}  // namespace

std::shared_ptr<data::Dataset> random_blocks(int64_t n) { return std::make_shared<RandomBlocks>(n); }

models::ModelInputs tiny_batch(const std::string& family) {
  torch::manual_seed(11);
  models::ModelInputs in;
  if (family == "vit") {
    in.pixel_values = torch::randn({2, 2, 12, 12});
    in.labels = torch::tensor({1, 4}, torch::kLong);
    return in;
  }
  const int64_t pad = family == "roberta" ? 1 : 0;
  in.input_ids = torch::randint(2, 61, {2, 9}, torch::kLong);
  in.attention_mask = torch::ones({2, 9}, torch::kLong);
  in.attention_mask.index_put_({1, torch::indexing::Slice(6, 9)}, 0);
  in.input_ids.index_put_({1, torch::indexing::Slice(6, 9)}, pad);
  if (family == "bert") in.token_type_ids = (torch::arange(9) >= 4).to(torch::kLong).unsqueeze(0).repeat({2, 1});
  in.labels = is_classifier(family) ? torch::tensor({2, 0}, torch::kLong) : in.input_ids.clone();
  if (family == "t5") {  // a target of its own length, the second one shorter (-100 past its end)
    in.labels = torch::randint(2, 61, {2, 5}, torch::kLong);
    in.labels.index_put_({1, torch::indexing::Slice(3, 5)}, -100);
  }
  return in;
}

void copy_dequantized_weights(models::PretrainedModel& quantized, models::PretrainedModel& reference) {
  torch::NoGradGuard g;
  auto wide = reference.adaptable_linears();
  size_t i = 0;
  for (auto& [name, lin] : quantized.adaptable_linears()) {
    auto& [ref_name, ref] = wide.at(i++);
    PEFT_CHECK(name == ref_name, "test", "copy_dequantized_weights: '{}' has no twin (found '{}')", name, ref_name);
    if (lin->quantized()) ref->weight_out_in().copy_(lin->weight_out_in());
  }
}

}  // namespace peft::test
