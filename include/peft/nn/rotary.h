// Rotary position embeddings (RoPE) as LLaMA uses them: the two halves of each head are
// rotated, with optional linear or dynamic-NTK scaling (config "rope_scaling").
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <ATen/core/Tensor.h>

namespace peft::nn {

struct RopeScaling {
  std::string type;     ///< "" (none), "linear" or "dynamic"
  double factor = 1.0;
};

class RotaryEmbedding {
 public:
  RotaryEmbedding(int64_t head_dim, double theta, int64_t max_position_embeddings, RopeScaling scaling = {});

  /// cos and sin for `position_ids` [batch, seq], each [batch, seq, head_dim] in `dtype`.
  /// `seq_len` is the number of positions in play (dynamic scaling grows theta beyond the trained length).
  std::pair<at::Tensor, at::Tensor> cos_sin(const at::Tensor& position_ids, int64_t seq_len,
                                            c10::ScalarType dtype) const;

 private:
  int64_t head_dim_;
  double theta_;
  int64_t max_positions_;
  RopeScaling scaling_;
};

/// x [batch, heads, seq, head_dim] rotated by cos/sin [batch, seq, head_dim].
at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace peft::nn
