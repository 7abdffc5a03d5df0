// Mixed-adapter batches: the rows of a batch split by the adapter each one runs. Every extension
// point runs an adapter's modules once on that adapter's rows (gathered along dim 0) and leaves
// the other rows alone; rows of the bare base ("" here) run no adapter at all.
#pragma once

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::nn {

struct RowGroup {
  std::string adapter;  ///< "" = the bare base
  at::Tensor rows;      ///< int64 row indices into the batch dimension, on the batch's device
  /// AdaptableLinear only: the adapter's own copies of this layer's weight / bias (modules_to_save,
  /// BitFit's biases), used on its rows instead of the base's; undefined when it has none.
  at::Tensor weight, bias;
};

/// Empty: no routing (the active adapters run on every row).
using RowGroups = std::vector<RowGroup>;

/// A module whose own weight / bias an adapter may replace by a trained copy (projections, norms):
/// in a mixed-adapter batch each group's rows use its copies.
class RowRoutable {
 public:
  virtual ~RowRoutable() = default;
  virtual void set_row_groups(RowGroups groups) = 0;
};

/// `y` with rows `rows` replaced by `values`. `y` must be a tensor the caller owns: it is written in
/// place when no autograd history is recorded (inference, one copy saved per group), else copied.
inline at::Tensor put_rows(at::Tensor y, const at::Tensor& rows, const at::Tensor& values) {
  if (y.requires_grad() || values.requires_grad()) return y.index_copy(0, rows, values);
  y.index_copy_(0, rows, values);
  return y;
}

/// `y` with `values` added to rows `rows`, in place under the same rule as put_rows.
inline at::Tensor add_to_rows(at::Tensor y, const at::Tensor& rows, const at::Tensor& values) {
  if (y.requires_grad() || values.requires_grad()) return y.index_add(0, rows, values);
  y.index_add_(0, rows, values);
  return y;
}

/// `y` (computed for every row with the module's own tensors) with the rows of each group that
/// carries copies replaced by `compute(x rows, weight, bias)`; the copies default to `weight`, `bias`.
template <typename Compute>
at::Tensor recompute_copied_rows(const RowGroups& groups, const at::Tensor& x, at::Tensor y, const at::Tensor& weight,
                                 const at::Tensor& bias, Compute&& compute) {
  for (const auto& g : groups) {
    if (!g.weight.defined() && !g.bias.defined()) continue;
    const at::Tensor rows = compute(x.index_select(0, g.rows), g.weight.defined() ? g.weight : weight,
                                    g.bias.defined() ? g.bias : bias);
    y = put_rows(std::move(y), g.rows, rows);
  }
  return y;
}

}  // namespace peft::nn
