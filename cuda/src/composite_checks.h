// Argument checks of the compositing ops, shared by the CPU (composite_cpu.cpp) and CUDA
// (composite_cuda_ops.cpp) wrappers. Shapes: N rays, S packed samples.
#pragma once

#include <torch/types.h>

#include <optional>

#include "op_utils.h"

namespace fastminerf {

// sigmas (S,), rgbs (S, 3), t_starts (S,), t_ends (S,) float32/float64 alike; offsets (N+1,) int64.
inline void check_composite_inputs(const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_starts,
                                   const at::Tensor& t_ends, const at::Tensor& offsets) {
  check_tensor(sigmas, "sigmas", 1, sigmas);
  check_float(sigmas, "sigmas");
  const int64_t s = sigmas.size(0);
  check_tensor(rgbs, "rgbs", 2, sigmas);
  check_tensor(t_starts, "t_starts", 1, sigmas);
  check_tensor(t_ends, "t_ends", 1, sigmas);
  check_tensor(offsets, "offsets", 1, sigmas);
  TORCH_CHECK(rgbs.size(0) == s && rgbs.size(1) == 3, "fastminerf: `rgbs` must have shape (", s, ", 3), got ",
              rgbs.sizes());
  TORCH_CHECK(t_starts.size(0) == s && t_ends.size(0) == s, "fastminerf: `t_starts` and `t_ends` must have shape (",
              s, ",), got ", t_starts.sizes(), " and ", t_ends.sizes());
  check_same_dtype(rgbs, "rgbs", sigmas, "sigmas");
  check_same_dtype(t_starts, "t_starts", sigmas, "sigmas");
  check_same_dtype(t_ends, "t_ends", sigmas, "sigmas");
  TORCH_CHECK(offsets.scalar_type() == at::kLong, "fastminerf: `offsets` must be int64, got ", offsets.scalar_type());
  TORCH_CHECK(offsets.size(0) >= 1, "fastminerf: `offsets` must have N + 1 >= 1 entries");
}

// The CSR invariant 0 = offsets[0] <= offsets[1] <= ... <= offsets[N] = S, checked where reading the values is
// free (host memory). The CUDA kernels clamp each ray's range to [0, S] instead of reading the values back.
inline void check_offsets_values_host(const at::Tensor& offsets, int64_t n_samples) {
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t n = offsets.size(0) - 1;
  TORCH_CHECK(o[0] == 0 && o[n] == n_samples, "fastminerf: `offsets` must start at 0 and end at the sample count ",
              n_samples, ", got ", o[0], " and ", o[n]);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(o[i] <= o[i + 1], "fastminerf: `offsets` must be non-decreasing, but offsets[", i, "] = ", o[i],
                " > offsets[", i + 1, "] = ", o[i + 1]);
  }
}

// Saved forward state: weights (S,), trans_end (N,) of the samples' dtype, n_active (N,) int64.
inline void check_composite_saved(const at::Tensor& weights, const at::Tensor& trans_end, const at::Tensor& n_active,
                                  const at::Tensor& sigmas_like, int64_t n_rays) {
  check_tensor(weights, "weights", 1, sigmas_like);
  check_tensor(trans_end, "trans_end", 1, sigmas_like);
  check_tensor(n_active, "n_active", 1, sigmas_like);
  TORCH_CHECK(weights.size(0) == sigmas_like.size(0) && weights.scalar_type() == sigmas_like.scalar_type(),
              "fastminerf: `weights` must have shape (", sigmas_like.size(0), ",) and dtype ",
              sigmas_like.scalar_type());
  TORCH_CHECK(trans_end.size(0) == n_rays && trans_end.scalar_type() == sigmas_like.scalar_type(),
              "fastminerf: `trans_end` must have shape (", n_rays, ",) and dtype ", sigmas_like.scalar_type());
  TORCH_CHECK(n_active.size(0) == n_rays && n_active.scalar_type() == at::kLong,
              "fastminerf: `n_active` must have shape (", n_rays, ",) and dtype int64");
}

// An optional output gradient: absent, or contiguous with the given leading size (and width, when > 0).
inline const at::Tensor* optional_grad(const std::optional<at::Tensor>& grad, const char* name, int64_t rows,
                                       int64_t width, const at::Tensor& like) {
  if (!grad.has_value() || !grad->defined()) return nullptr;
  const at::Tensor& g = *grad;
  check_tensor(g, name, width > 0 ? 2 : 1, like);
  TORCH_CHECK(g.size(0) == rows && (width == 0 || g.size(1) == width) && g.scalar_type() == like.scalar_type(),
              "fastminerf: `", name, "` has shape ", g.sizes(), " and dtype ", g.scalar_type(), "; expected (", rows,
              width > 0 ? ", 3)" : ",)", " and ", like.scalar_type());
  return &g;
}

// Data pointer of an optional tensor, or null when it is absent.
template <typename T>
const T* data_or_null(const at::Tensor* t) {
  return t ? t->data_ptr<T>() : nullptr;
}

}  // namespace fastminerf
