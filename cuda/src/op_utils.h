// Host-side helpers shared by the torch op wrappers (CPU and CUDA): argument checks with messages that
// name the argument, and conversion of the small per-level arrays into the kernels' by-value structs.
#pragma once

#include <torch/types.h>

#include <string>

#include "fastminerf/hash_grid.h"

namespace fastminerf {

inline void check_tensor(const at::Tensor& t, const char* name, int64_t dim, const at::Tensor& like) {
  TORCH_CHECK(t.defined(), "fastminerf: `", name, "` is undefined");
  TORCH_CHECK(t.dim() == dim, "fastminerf: `", name, "` must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "fastminerf: `", name, "` must be contiguous");
  TORCH_CHECK(t.device() == like.device(), "fastminerf: `", name, "` is on ", t.device(), " but expected ",
              like.device());
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "fastminerf: `", name,
              "` must be float32 or float64, got ", t.scalar_type());
}

// `t` must have the dtype of `ref` (named in the message as `ref_name`).
inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastminerf: `", name, "` dtype ", t.scalar_type(),
              " differs from `", ref_name, "` dtype ", ref.scalar_type());
}

inline hashgrid::GridMeta make_grid_meta(at::IntArrayRef offsets, at::IntArrayRef resolutions,
                                         at::ArrayRef<double> scales, int64_t n_features, int64_t salted_from = -1) {
  const int64_t n_levels = static_cast<int64_t>(resolutions.size());
  TORCH_CHECK(n_levels >= 1 && n_levels <= hashgrid::kMaxLevels, "fastminerf: hash grid needs 1..",
              hashgrid::kMaxLevels, " levels, got ", n_levels);
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == n_levels + 1 &&
                  static_cast<int64_t>(scales.size()) == n_levels,
              "fastminerf: hash grid level arrays disagree: ", offsets.size(), " offsets, ", resolutions.size(),
              " resolutions, ", scales.size(), " scales");
  TORCH_CHECK(n_features == 1 || n_features == 2 || n_features == 4 || n_features == 8,
              "fastminerf: features per level must be 1, 2, 4 or 8, got ", n_features);
  hashgrid::GridMeta meta{};
  meta.n_levels = static_cast<int>(n_levels);
  meta.n_features = static_cast<int>(n_features);
  TORCH_CHECK(salted_from == -1 || (salted_from >= 0 && salted_from <= n_levels), "fastminerf: salted_from must be in 0..",
              n_levels, " (levels from it on hash the salt), got ", salted_from);
  meta.salted_from = salted_from < 0 ? static_cast<int>(n_levels) : static_cast<int>(salted_from);
  for (int64_t l = 0; l <= n_levels; ++l) {
    TORCH_CHECK(offsets[l] >= 0 && offsets[l] <= (int64_t(1) << 31), "fastminerf: bad level offset ", offsets[l]);
    meta.offsets[l] = static_cast<uint32_t>(offsets[l]);
    if (l > 0) TORCH_CHECK(offsets[l] > offsets[l - 1], "fastminerf: level ", l - 1, " has an empty table");
  }
  for (int64_t l = 0; l < n_levels; ++l) {
    TORCH_CHECK(resolutions[l] >= 1 && resolutions[l] <= int64_t(UINT32_MAX), "fastminerf: level ", l,
                " resolution must be in 1..", UINT32_MAX, " (the kernels hold it as uint32), got ", resolutions[l]);
    meta.resolutions[l] = static_cast<uint32_t>(resolutions[l]);
    meta.scales[l] = scales[l];
  }
  return meta;
}

inline void check_hash_inputs(const at::Tensor& points, const at::Tensor& table, const hashgrid::GridMeta& meta) {
  check_tensor(points, "points", 2, points);
  check_tensor(table, "table", 2, points);
  check_float(points, "points");
  TORCH_CHECK(points.size(1) == 3, "fastminerf: `points` must have shape (N, 3), got ", points.sizes());
  TORCH_CHECK(table.scalar_type() == points.scalar_type(), "fastminerf: `table` dtype ", table.scalar_type(),
              " differs from `points` dtype ", points.scalar_type());
  TORCH_CHECK(table.size(0) == meta.offsets[meta.n_levels] && table.size(1) == meta.n_features,
              "fastminerf: `table` must have shape (", meta.offsets[meta.n_levels], ", ", meta.n_features,
              "), got ", table.sizes());
}

// `salt`: int32 (N,) per-point salts, or an empty tensor when no level is salted. Returns its data or null.
inline const int32_t* check_salt(const at::Tensor& salt, const at::Tensor& points, const hashgrid::GridMeta& meta) {
  if (meta.salted_from >= meta.n_levels) return nullptr;
  check_tensor(salt, "salt", 1, points);
  TORCH_CHECK(salt.scalar_type() == at::kInt && salt.size(0) == points.size(0),
              "fastminerf: `salt` must be int32 of shape (", points.size(0), ") when levels are salted, got ",
              salt.scalar_type(), " ", salt.sizes());
  return salt.data_ptr<int32_t>();
}

inline void check_hash_grad(const at::Tensor& grad_out, const at::Tensor& points, const hashgrid::GridMeta& meta) {
  check_tensor(grad_out, "grad_out", 2, points);
  const int64_t width = int64_t(meta.n_levels) * meta.n_features;
  TORCH_CHECK(grad_out.size(0) == points.size(0) && grad_out.size(1) == width &&
                  grad_out.scalar_type() == points.scalar_type(),
              "fastminerf: `grad_out` must have shape (", points.size(0), ", ", width, ") and dtype ",
              points.scalar_type(), ", got ", grad_out.sizes(), " ", grad_out.scalar_type());
}

}  // namespace fastminerf
