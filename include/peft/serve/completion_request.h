// The bodies of an OpenAI-style completion request and of a classification request, checked field
// by field: what peft-serve's POST /v1/completions and /v1/classify read, for any front end that
// takes the same JSON.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/generate.h"

namespace peft::serve {

struct CompletionRequest {
  std::vector<std::string> prompts;  ///< "prompt": a string or a list of strings
  std::string adapter;               ///< "adapter": the delta's name; absent: the bare base
  GenerationConfig config;           ///< max_tokens (16), temperature (1), top_p, top_k, seed, repetition_penalty
  std::vector<std::string> stop;     ///< "stop": a string or a list of strings (text that ends a choice)
  bool stream = false;               ///< "stream": server-sent events (one prompt)
};

/// Reads a request body. Throws peft::Error naming the field and what was expected, for unknown
/// fields too; `max_tokens_limit` caps max_tokens.
CompletionRequest parse_completion_request(const nlohmann::json& body, int64_t max_tokens_limit);

struct ClassifyRequest {
  std::vector<std::string> inputs;  ///< "input": a string or a list of strings
  std::string adapter;              ///< "adapter": the sequence-classification delta (required)
};

/// Reads a POST /v1/classify body (unknown fields refused by name); at most `max_inputs` texts.
ClassifyRequest parse_classify_request(const nlohmann::json& body, size_t max_inputs);

}  // namespace peft::serve
