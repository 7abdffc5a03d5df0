// The config.json fields BERT-style encoders share (BERT, RoBERTa, ViT name them identically),
// read and written in one place for every config struct that has them.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "peft/core/json_io.h"

namespace peft::models {

template <class Config>
void read_encoder_fields(const nlohmann::json& j, Config& cfg, const std::string& component) {
  using core::get_or;
  const std::string w = "config.json";
  cfg.hidden_size = get_or<int64_t>(j, "hidden_size", cfg.hidden_size, component, w);
  cfg.num_hidden_layers = get_or<int64_t>(j, "num_hidden_layers", cfg.num_hidden_layers, component, w);
  cfg.num_attention_heads = get_or<int64_t>(j, "num_attention_heads", cfg.num_attention_heads, component, w);
  cfg.intermediate_size = get_or<int64_t>(j, "intermediate_size", cfg.intermediate_size, component, w);
  cfg.hidden_act = get_or<std::string>(j, "hidden_act", cfg.hidden_act, component, w);
  cfg.hidden_dropout_prob = get_or<double>(j, "hidden_dropout_prob", cfg.hidden_dropout_prob, component, w);
  cfg.attention_probs_dropout_prob =
      get_or<double>(j, "attention_probs_dropout_prob", cfg.attention_probs_dropout_prob, component, w);
  cfg.initializer_range = get_or<double>(j, "initializer_range", cfg.initializer_range, component, w);
  cfg.layer_norm_eps = get_or<double>(j, "layer_norm_eps", cfg.layer_norm_eps, component, w);
}

template <class Config>
void write_encoder_fields(nlohmann::json& j, const Config& cfg) {
  j["hidden_size"] = cfg.hidden_size;
  j["num_hidden_layers"] = cfg.num_hidden_layers;
  j["num_attention_heads"] = cfg.num_attention_heads;
  j["intermediate_size"] = cfg.intermediate_size;
  j["hidden_act"] = cfg.hidden_act;
  j["hidden_dropout_prob"] = cfg.hidden_dropout_prob;
  j["attention_probs_dropout_prob"] = cfg.attention_probs_dropout_prob;
  j["initializer_range"] = cfg.initializer_range;
  j["layer_norm_eps"] = cfg.layer_norm_eps;
}

}  // namespace peft::models
