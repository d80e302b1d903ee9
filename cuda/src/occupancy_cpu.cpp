// Occupancy grid and ray marcher: op schemas and the OpenMP CPU implementation. The per-ray walk and the
// per-cell math are the shared code in cuda/include/fastminerf/occupancy.h, also run by occupancy_cuda.cu.
//
// Threads come from at::parallel_for (PyTorch's OpenMP pool). Rays differ a lot in cost (a miss is free, a
// ray through the head walks a hundred samples), so the marcher uses small chunks.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <limits>

#include "fastminerf/occupancy.h"
#include "occupancy_ops.h"

namespace fastminerf {
namespace {

constexpr int64_t kRayGrain = 64;       // rays per parallel chunk
constexpr int64_t kCellGrain = 1 << 14;  // cells (or updates) per parallel chunk

struct NoEmit {
  inline void operator()(int64_t, float, float) const {}
};

struct WriteEmit {
  int64_t ray;
  int64_t* ray_indices;
  float* t_starts;
  float* t_ends;
  inline void operator()(int64_t j, float t0, float t1) const {
    ray_indices[j] = ray;
    t_starts[j] = t0;
    t_ends[j] = t1;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> march_rays_cpu(
    const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& near, const at::Tensor& far,
    const at::Tensor& bitfield, at::ArrayRef<double> aabbs, at::IntArrayRef resolution, double step_size,
    double cone_angle, double max_step_size, int64_t max_samples) {
  const occupancy::GridSpec g = make_occupancy_grid(aabbs, resolution);
  const occupancy::MarchParams mp = make_march_params(step_size, cone_angle, max_step_size, max_samples);
  check_march_inputs(origins, directions, near, far, bitfield, g);
  const int64_t n = origins.size(0);
  const float* o = origins.data_ptr<float>();
  const float* d = directions.data_ptr<float>();
  const float* tn = near.data_ptr<float>();
  const float* tf = far.data_ptr<float>();
  const uint8_t* bits = bitfield.data_ptr<uint8_t>();

  // Pass 1: samples per ray.
  auto counts = at::empty({n}, origins.options().dtype(at::kLong));
  int64_t* cnt = counts.data_ptr<int64_t>();
  at::parallel_for(0, n, kRayGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      cnt[i] = occupancy::march_ray(g, mp, bits, o + 3 * i, d + 3 * i, tn[i], tf[i], NoEmit());
    }
  });
  auto offsets = at::zeros({n + 1}, counts.options());
  if (n > 0) offsets.slice(0, 1).copy_(at::cumsum(counts, 0));
  const int64_t total = offsets[n].item<int64_t>();

  // Pass 2: the same walk, writing each ray's samples at its offset.
  auto ray_indices = at::empty({total}, counts.options());
  auto t_starts = at::empty({total}, origins.options());
  auto t_ends = at::empty({total}, origins.options());
  const int64_t* off = offsets.data_ptr<int64_t>();
  int64_t* ri = ray_indices.data_ptr<int64_t>();
  float* ts = t_starts.data_ptr<float>();
  float* te = t_ends.data_ptr<float>();
  at::parallel_for(0, n, kRayGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (off[i + 1] == off[i]) continue;
      occupancy::march_ray(g, mp, bits, o + 3 * i, d + 3 * i, tn[i], tf[i],
                           WriteEmit{i, ri + off[i], ts + off[i], te + off[i]});
    }
  });
  return {ray_indices, t_starts, t_ends, offsets};
}

inline void atomic_max(float* addr, float v) {
  float expected;
  __atomic_load(addr, &expected, __ATOMIC_RELAXED);
  while (v > expected &&
         !__atomic_compare_exchange(addr, &expected, &v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
}

at::Tensor occupancy_ema_cpu(const at::Tensor& occs, const at::Tensor& indices, const at::Tensor& values,
                             double decay) {
  check_ema_inputs(occs, indices, values);
  const int64_t n_cells = occs.size(0), m = indices.size(0);
  auto new_max = at::full({n_cells}, -std::numeric_limits<float>::infinity(), occs.options());
  auto visited = at::zeros({n_cells}, occs.options().dtype(at::kByte));
  const int64_t* idx = indices.data_ptr<int64_t>();
  const float* val = values.data_ptr<float>();
  float* nm = new_max.data_ptr<float>();
  uint8_t* vis = visited.data_ptr<uint8_t>();
  for (int64_t j = 0; j < m; ++j) {
    TORCH_CHECK(idx[j] >= 0 && idx[j] < n_cells, "fastminerf: occupancy update index ", idx[j], " out of range [0, ",
                n_cells, ")");
  }
  at::parallel_for(0, m, kCellGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      atomic_max(nm + idx[j], val[j]);
      __atomic_store_n(vis + idx[j], uint8_t(1), __ATOMIC_RELAXED);
    }
  });
  auto out = at::empty_like(occs);
  const float* occ = occs.data_ptr<float>();
  float* res = out.data_ptr<float>();
  const float dec = static_cast<float>(decay);
  at::parallel_for(0, n_cells, kCellGrain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) res[c] = occupancy::ema_cell(occ[c], vis[c] != 0, nm[c], dec);
  });
  return out;
}

at::Tensor occupancy_bitfield_cpu(const at::Tensor& occs, double threshold, int64_t levels) {
  check_pack_inputs(occs, levels);
  const int64_t cells = occs.size(0) / levels, bytes = (cells + 7) / 8;
  auto out = at::empty({levels, bytes}, occs.options().dtype(at::kByte));
  const float* occ = occs.data_ptr<float>();
  uint8_t* res = out.data_ptr<uint8_t>();
  const float thr = static_cast<float>(threshold);  // a float32 value passed as double: exact
  at::parallel_for(0, levels * bytes, kCellGrain / 8, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t l = b / bytes, k = b % bytes;
      res[b] = occupancy::pack_byte(occ + l * cells, cells, k, thr);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastminerf, m) {
  m.def(
      "march_rays(Tensor origins, Tensor directions, Tensor near, Tensor far, Tensor bitfield, float[] aabbs, "
      "int[] resolution, float step_size, float cone_angle, float max_step_size, int max_samples) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.def("occupancy_ema(Tensor occs, Tensor indices, Tensor values, float decay) -> Tensor");
  m.def("occupancy_bitfield(Tensor occs, float threshold, int levels) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastminerf, CPU, m) {
  m.impl("march_rays", &march_rays_cpu);
  m.impl("occupancy_ema", &occupancy_ema_cpu);
  m.impl("occupancy_bitfield", &occupancy_bitfield_cpu);
}

}  // namespace fastminerf
