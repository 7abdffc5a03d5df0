#include "peft/serve/completion_request.h"

#include <set>

#include "peft/core/error.h"

namespace peft::serve {
namespace {

constexpr const char* kC = "request";

std::vector<std::string> strings(const nlohmann::json& v, const char* field) {
  if (v.is_string()) return {v.get<std::string>()};
  PEFT_CHECK(v.is_array() && !v.empty(), kC, "{}: expected a string or a non-empty list of strings", field);
  std::vector<std::string> out;
  for (const auto& s : v) {
    PEFT_CHECK(s.is_string(), kC, "{}: expected a string or a non-empty list of strings, found {}", field, s.dump());
    out.push_back(s.get<std::string>());
  }
  return out;
}

double number(const nlohmann::json& v, const char* field) {
  PEFT_CHECK(v.is_number(), kC, "{}: expected a number, found {}", field, v.dump());
  return v.get<double>();
}

int64_t integer(const nlohmann::json& v, const char* field) {
  PEFT_CHECK(v.is_number_integer(), kC, "{}: expected an integer, found {}", field, v.dump());
  return v.get<int64_t>();
}

}  // namespace

CompletionRequest parse_completion_request(const nlohmann::json& body, int64_t max_tokens_limit) {
  PEFT_CHECK(body.is_object(), kC, "the body must be a JSON object");
  static const std::set<std::string> known = {"prompt", "adapter", "model", "max_tokens", "temperature", "top_p",
                                              "top_k", "stop", "seed", "stream", "repetition_penalty", "user"};
  for (const auto& [key, value] : body.items())
    PEFT_CHECK(known.count(key), kC, "unknown field '{}' (fields: prompt, adapter, max_tokens, temperature, top_p, "
               "top_k, stop, seed, stream, repetition_penalty)", key);
  PEFT_CHECK(body.contains("prompt"), kC, "prompt: required");
  CompletionRequest r;
  r.prompts = strings(body["prompt"], "prompt");
  for (const auto& p : r.prompts) PEFT_CHECK(!p.empty(), kC, "prompt: an empty prompt");
  if (body.contains("adapter") && !body["adapter"].is_null()) {
    PEFT_CHECK(body["adapter"].is_string(), kC, "adapter: expected a delta's name");
    r.adapter = body["adapter"].get<std::string>();
  }
  r.config.max_new_tokens = 16;
  r.config.temperature = 1.0;
  if (body.contains("max_tokens")) {
    r.config.max_new_tokens = integer(body["max_tokens"], "max_tokens");
    PEFT_CHECK(r.config.max_new_tokens >= 1 && r.config.max_new_tokens <= max_tokens_limit, kC,
               "max_tokens: expected 1 to {}, found {}", max_tokens_limit, r.config.max_new_tokens);
  }
  if (body.contains("temperature")) {
    r.config.temperature = number(body["temperature"], "temperature");
    PEFT_CHECK(r.config.temperature >= 0.0 && r.config.temperature <= 10.0, kC, "temperature: expected 0 to 10, found {}",
               r.config.temperature);
  }
  if (body.contains("top_p")) {
    r.config.top_p = number(body["top_p"], "top_p");
    PEFT_CHECK(r.config.top_p > 0.0 && r.config.top_p <= 1.0, kC, "top_p: expected (0, 1], found {}", r.config.top_p);
  }
  if (body.contains("top_k")) {
    r.config.top_k = integer(body["top_k"], "top_k");
    PEFT_CHECK(r.config.top_k >= 0, kC, "top_k: expected >= 0, found {}", r.config.top_k);
  }
  if (body.contains("repetition_penalty")) {
    r.config.repetition_penalty = number(body["repetition_penalty"], "repetition_penalty");
    PEFT_CHECK(r.config.repetition_penalty > 0.0, kC, "repetition_penalty: expected > 0, found {}",
               r.config.repetition_penalty);
  }
  if (body.contains("seed") && !body["seed"].is_null()) {
    const int64_t seed = integer(body["seed"], "seed");
    PEFT_CHECK(seed >= 0, kC, "seed: expected >= 0, found {}", seed);
    r.config.seed = static_cast<uint64_t>(seed);
  }
  if (body.contains("stop") && !body["stop"].is_null()) {
    r.stop = strings(body["stop"], "stop");
    for (const auto& s : r.stop) PEFT_CHECK(!s.empty(), kC, "stop: an empty stop string");
  }
  if (body.contains("stream")) {
    PEFT_CHECK(body["stream"].is_boolean(), kC, "stream: expected true or false");
    r.stream = body["stream"].get<bool>();
    PEFT_CHECK(!r.stream || r.prompts.size() == 1, kC, "stream: streams one prompt at a time");
  }
  return r;
}

ClassifyRequest parse_classify_request(const nlohmann::json& body, size_t max_inputs) {
  PEFT_CHECK(body.is_object(), kC, "the body must be a JSON object");
  static const std::set<std::string> known = {"input", "adapter", "model", "user"};
  for (const auto& [key, value] : body.items())
    PEFT_CHECK(known.count(key), kC, "unknown field '{}' (fields: input, adapter)", key);
  PEFT_CHECK(body.contains("input"), kC, "input: required");
  PEFT_CHECK(body.contains("adapter") && body["adapter"].is_string() && !body["adapter"].get<std::string>().empty(), kC,
             "adapter: required, the name of a sequence-classification delta");
  ClassifyRequest r;
  r.inputs = strings(body["input"], "input");
  PEFT_CHECK(r.inputs.size() <= max_inputs, kC, "input: {} texts, at most {} per request", r.inputs.size(), max_inputs);
  for (const auto& t : r.inputs) PEFT_CHECK(!t.empty(), kC, "input: an empty text");
  r.adapter = body["adapter"].get<std::string>();
  return r;
}

}  // namespace peft::serve
