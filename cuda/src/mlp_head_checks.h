// Argument checks of the fused MLP head ops, shared by the CPU (mlp_head_cpu.cpp) and CUDA
// (mlp_head_cuda_ops.cpp) wrappers. Shapes: S samples, N per-ray rows, P inputs, H hidden, O outputs.
#pragma once

#include <torch/types.h>

#include <optional>

#include "fastminerf/mlp_head.h"
#include "op_utils.h"

namespace fastminerf {

// x (S, P), pre (N, H), ray_indices (S,) int64 or none (then N == S), w1 (H, P), w2 (O, H), b2 (O,). Returns the
// ray indices, or null when there are none.
inline const at::Tensor* check_mlp_head_inputs(const at::Tensor& x, const at::Tensor& pre,
                                               const std::optional<at::Tensor>& ray_indices, const at::Tensor& w1,
                                               const at::Tensor& w2, const at::Tensor& b2) {
  check_tensor(x, "x", 2, x);
  check_float(x, "x");
  check_tensor(pre, "pre", 2, x);
  check_tensor(w1, "w1", 2, x);
  check_tensor(w2, "w2", 2, x);
  check_tensor(b2, "b2", 1, x);
  check_same_dtype(pre, "pre", x, "x");
  check_same_dtype(w1, "w1", x, "x");
  check_same_dtype(w2, "w2", x, "x");
  check_same_dtype(b2, "b2", x, "x");
  const int64_t H = w1.size(0);
  TORCH_CHECK(H >= 1 && H <= mlphead::kMaxHidden, "fastminerf: the fused head supports 1..", mlphead::kMaxHidden,
              " hidden units, got ", H);
  TORCH_CHECK(w1.size(1) == x.size(1), "fastminerf: `w1` must have shape (H, ", x.size(1), "), got ", w1.sizes());
  TORCH_CHECK(pre.size(1) == H, "fastminerf: `pre` must have ", H, " columns, got shape ", pre.sizes());
  TORCH_CHECK(w2.size(1) == H && w2.size(0) >= 1, "fastminerf: `w2` must have shape (O, ", H, "), got ", w2.sizes());
  TORCH_CHECK(b2.size(0) == w2.size(0), "fastminerf: `b2` must have shape (", w2.size(0), ",), got ", b2.sizes());
  if (!ray_indices.has_value()) {
    TORCH_CHECK(pre.size(0) == x.size(0), "fastminerf: without `ray_indices`, `pre` needs one row per sample (",
                x.size(0), "), got ", pre.size(0));
    return nullptr;
  }
  const at::Tensor& ri = *ray_indices;
  check_tensor(ri, "ray_indices", 1, x);
  TORCH_CHECK(ri.scalar_type() == at::kLong && ri.size(0) == x.size(0), "fastminerf: `ray_indices` must be int64 of "
              "shape (", x.size(0), ",), got ", ri.scalar_type(), " ", ri.sizes());
  TORCH_CHECK(x.size(0) == 0 || pre.size(0) > 0, "fastminerf: `ray_indices` point into `pre`, which has no rows");
  return &ri;
}

inline void check_mlp_head_grad(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w2) {
  check_tensor(grad_y, "grad_y", 2, x);
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type() && grad_y.size(0) == x.size(0) && grad_y.size(1) == w2.size(0),
              "fastminerf: `grad_y` must have shape (", x.size(0), ", ", w2.size(0), ") and dtype ", x.scalar_type(),
              ", got ", grad_y.sizes(), " ", grad_y.scalar_type());
}

// Ray indices in [0, N), checked where reading them is free (host memory). Returns whether they are
// non-decreasing (samples packed ray after ray), on which the CPU backward's parallel split relies.
inline bool check_ray_indices_host(const at::Tensor* ray_indices, int64_t n_rows) {
  if (ray_indices == nullptr) return true;
  const int64_t* ri = ray_indices->data_ptr<int64_t>();
  const int64_t s = ray_indices->numel();
  bool sorted = true;
  for (int64_t i = 0; i < s; ++i) {
    TORCH_CHECK(ri[i] >= 0 && ri[i] < n_rows, "fastminerf: `ray_indices` must lie in [0, ", n_rows,
                "), but ray_indices[", i, "] = ", ri[i]);
    sorted = sorted && (i == 0 || ri[i - 1] <= ri[i]);
  }
  return sorted;
}

}  // namespace fastminerf
