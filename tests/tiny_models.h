// Small random models of every family (deliberately odd geometries) and matching batches, for
// tests that must hold on every backbone.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>
#include <nlohmann/json.hpp>

#include "peft/data/dataset.h"
#include "peft/models/model.h"

namespace peft::test {

/// gpt2 (causal LM), bert and roberta (sequence classification), llama (causal LM, GQA), vit
/// (image classification).
const std::vector<std::string>& tiny_families();
bool is_classifier(const std::string& family);
nlohmann::json tiny_config(const std::string& family);
/// Random weights with every norm and bias perturbed, so each tensor matters.
/// `overrides`: config.json keys to change (e.g. tiny_dropout's).
std::shared_ptr<models::PretrainedModel> tiny_model(const std::string& family, c10::ScalarType dtype = c10::kFloat,
                                                    uint64_t seed = 7, const nlohmann::json& overrides = {});
/// The family's dropout keys at 0.1 (every tiny config has dropout off).
nlohmann::json tiny_dropout(const std::string& family);
/// `n` rows of 12 random tokens (< 61) with causal-LM labels, each drawn from its own index's seed.
std::shared_ptr<data::Dataset> random_blocks(int64_t n);
/// Gives every linear of `reference` (a wide twin of `quantized`: same architecture) the
/// dequantized weight of `quantized`'s layer where that one is quantized.
void copy_dequantized_weights(models::PretrainedModel& quantized, models::PretrainedModel& reference);
/// Two rows (the second one padded for text models) with labels for the family's head.
models::ModelInputs tiny_batch(const std::string& family);

}  // namespace peft::test
