// Shared helpers for the test suite.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "peft/core/error.h"
#include "peft/models/model.h"

namespace peft::test {

/// A file under tests/fixtures.
/// The message of the peft::Error `f` throws ("(no error)" when it throws none).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

inline std::string fixture(const std::string& rel) { return std::string(PEFT_TEST_FIXTURES) + "/" + rel; }

/// A file of the source tree (bundled models, data, configs).
inline std::string source(const std::string& rel) { return std::string(PEFT_SOURCE_DIR) + "/" + rel; }

/// The whole text of a file ("" when it cannot be read).
inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

/// Runs a shell command with its stdout and stderr in `log`; its exit status.
inline int run(const std::string& cmd, const std::string& log) { return std::system((cmd + " > " + log + " 2>&1").c_str()); }

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  if (a.numel() == 0) return 0.0;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

inline bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && at::equal(a, b);
}

/// Elements in the given tensors (e.g. a PeftModel's trainable_parameters()).
inline int64_t element_count(const std::vector<at::Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

/// Model inputs stored by HF's argument names (input_ids, attention_mask, token_type_ids,
/// pixel_values, labels) in a fixture safetensors file.
models::ModelInputs fixture_inputs(const std::string& rel, bool hidden_states = true);

/// The largest |ours - theirs| over logits, last_hidden_state, pooler_output and every
/// hidden_states.<i> that the reference file holds (each one we produce must be there).
double max_output_diff(const models::ModelOutput& out, const std::string& ref_rel);

/// A fresh, empty directory under the system temp dir, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace peft::test
