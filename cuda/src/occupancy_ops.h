// Host-side helpers of the occupancy ops, shared by the CPU and CUDA registrations: argument checks and the
// conversion of the op arguments into the kernels' by-value structs (fastminerf/occupancy.h).
#pragma once

#include <torch/types.h>

#include <utility>

#include "fastminerf/occupancy.h"
#include "op_utils.h"

namespace fastminerf {

// aabbs: the cascades' boxes, levels x {xmin, ymin, zmin, xmax, ymax, zmax}, flattened (finest first).
inline occupancy::GridSpec make_occupancy_grid(at::ArrayRef<double> aabbs, at::IntArrayRef resolution) {
  TORCH_CHECK(resolution.size() == 3, "fastminerf: occupancy `resolution` needs 3 values, got ", resolution.size());
  TORCH_CHECK(aabbs.size() % 6 == 0 && !aabbs.empty(), "fastminerf: occupancy `aabbs` needs 6 values per level, got ",
              aabbs.size());
  const int64_t levels = static_cast<int64_t>(aabbs.size() / 6);
  TORCH_CHECK(levels <= occupancy::kMaxLevels, "fastminerf: occupancy grid supports at most ", occupancy::kMaxLevels,
              " levels, got ", levels);
  occupancy::GridSpec g{};
  g.levels = static_cast<int>(levels);
  int64_t cells = 1;
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK(resolution[a] >= 1 && resolution[a] <= 4096, "fastminerf: occupancy resolution must be in 1..4096, got ",
                resolution[a]);
    TORCH_CHECK(levels == 1 || resolution[a] % 4 == 0,
                "fastminerf: with several cascades every resolution must be a multiple of 4 (each cascade then covers "
                "whole cells of the next coarser one), got ",
                resolution[a]);
    g.res[a] = static_cast<int>(resolution[a]);
    cells *= resolution[a];
  }
  g.cells_per_level = cells;
  g.bytes_per_level = (cells + 7) / 8;
  for (int64_t l = 0; l < levels; ++l) {
    for (int a = 0; a < 3; ++a) {
      const float lo = static_cast<float>(aabbs[6 * l + a]);
      const float hi = static_cast<float>(aabbs[6 * l + 3 + a]);
      TORCH_CHECK(hi > lo, "fastminerf: occupancy aabb of level ", l, " is empty along axis ", a);
      g.lo[l][a] = lo;
      g.hi[l][a] = hi;
      g.scale[l][a] = static_cast<float>(g.res[a]) / (hi - lo);  // float32 division, rounded once
      g.cell[l][a] = (hi - lo) / static_cast<float>(g.res[a]);
    }
  }
  return g;
}

inline occupancy::MarchParams make_march_params(double step_size, double cone_angle, double max_step_size,
                                                int64_t max_samples) {
  const float step = static_cast<float>(step_size);
  TORCH_CHECK(step > 0.0f && std::isfinite(step), "fastminerf: `step_size` must be a positive number, got ", step_size);
  TORCH_CHECK(cone_angle >= 0.0 && std::isfinite(cone_angle), "fastminerf: `cone_angle` must be >= 0, got ", cone_angle);
  TORCH_CHECK(static_cast<float>(max_step_size) >= step, "fastminerf: `max_step_size` must be >= `step_size`");
  return occupancy::MarchParams{step, static_cast<float>(cone_angle), static_cast<float>(max_step_size), max_samples};
}

inline void check_march_inputs(const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& near,
                               const at::Tensor& far, const at::Tensor& bitfield, const occupancy::GridSpec& g) {
  check_tensor(origins, "origins", 2, origins);
  check_tensor(directions, "directions", 2, origins);
  check_tensor(near, "near", 1, origins);
  check_tensor(far, "far", 1, origins);
  check_tensor(bitfield, "bitfield", 2, origins);
  const int64_t n = origins.size(0);
  TORCH_CHECK(origins.size(1) == 3 && directions.size(0) == n && directions.size(1) == 3,
              "fastminerf: `origins` and `directions` must have shape (N, 3), got ", origins.sizes(), " and ",
              directions.sizes());
  TORCH_CHECK(near.size(0) == n && far.size(0) == n, "fastminerf: `near` and `far` must have shape (N,)");
  const std::pair<const at::Tensor*, const char*> rays[] = {
      {&origins, "origins"}, {&directions, "directions"}, {&near, "near"}, {&far, "far"}};
  for (const auto& [t, name] : rays) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "fastminerf: `", name, "` must be float32 (march_rays takes float32 "
                "rays), got ", t->scalar_type());
  }
  TORCH_CHECK(bitfield.scalar_type() == at::kByte && bitfield.size(0) == g.levels &&
                  bitfield.size(1) == g.bytes_per_level,
              "fastminerf: `bitfield` must be uint8 of shape (", g.levels, ", ", g.bytes_per_level, "), got ",
              bitfield.scalar_type(), " ", bitfield.sizes());
}

inline void check_ema_inputs(const at::Tensor& occs, const at::Tensor& indices, const at::Tensor& values) {
  check_tensor(occs, "occs", 1, occs);
  check_tensor(indices, "indices", 1, occs);
  check_tensor(values, "values", 1, occs);
  TORCH_CHECK(occs.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat,
              "fastminerf: `occs` and `values` must be float32");
  TORCH_CHECK(indices.scalar_type() == at::kLong, "fastminerf: `indices` must be int64");
  TORCH_CHECK(indices.size(0) == values.size(0), "fastminerf: `indices` and `values` differ in length: ",
              indices.size(0), " vs ", values.size(0));
}

inline void check_pack_inputs(const at::Tensor& occs, int64_t levels) {
  check_tensor(occs, "occs", 1, occs);
  TORCH_CHECK(occs.scalar_type() == at::kFloat, "fastminerf: `occs` must be float32");
  TORCH_CHECK(levels >= 1 && occs.size(0) % levels == 0, "fastminerf: `occs` length ", occs.size(0),
              " is not a multiple of the ", levels, " levels");
}

}  // namespace fastminerf
