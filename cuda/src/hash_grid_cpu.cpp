// Hash-grid encoding: op schema and the OpenMP CPU implementation. The per-point math is in
// cuda/include/fastminerf/hash_grid.h and is shared with hash_grid_cuda.cu.
//
// Loop order follows tiny-cuda-nn: levels outside, points inside, so one level's table (at most
// 2^log2_T * F values) stays in cache while all points read it. Threads come from at::parallel_for,
// i.e. PyTorch's own OpenMP pool (one OpenMP runtime in the process, sized by torch.set_num_threads).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <vector>

#include "fastminerf/hash_grid.h"
#include "op_utils.h"

namespace fastminerf {
namespace {

using hashgrid::GridMeta;

template <typename T>
struct PlainAdd {
  inline void operator()(T* addr, T v) const { *addr += v; }
};

constexpr int64_t kGrain = 2048;  // points per parallel chunk: enough work to hide scheduling cost
constexpr int kBlock = 16;        // points whose table rows are prefetched together

// Walks points [begin, end) in blocks of kBlock: finds every point's corners at one level and prefetches their
// rows of `rows_base` (for writing when kWrite) and, when not null, of `also_read` first, then calls
// visit(i, rows, weights, frac) per point, so that many cache misses are in flight at once instead of one point's
// at a time. `salt` (null: none) is read only on salted levels.
template <typename T, int F, bool kWrite, typename Visit>
void for_point_blocks(const T* points, const int32_t* salt, bool salted, int64_t begin, int64_t end, T scale,
                      uint32_t res, uint32_t size, const T* rows_base, Visit visit, const T* also_read = nullptr) {
  uint32_t rows[kBlock][8];
  T weights[kBlock][8];
  T frac[kBlock][3];
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, end - b0));
    for (int k = 0; k < nb; ++k) {
      const uint32_t s = salted ? static_cast<uint32_t>(salt[b0 + k]) : 0u;
      hashgrid::level_corners(points + 3 * (b0 + k), scale, res, size, rows[k], weights[k], frac[k], s, salted);
      for (int c = 0; c < 8; ++c) {
        if (rows_base != nullptr) __builtin_prefetch(rows_base + static_cast<size_t>(rows[k][c]) * F, kWrite ? 1 : 0);
        if (also_read != nullptr) __builtin_prefetch(also_read + static_cast<size_t>(rows[k][c]) * F, 0);
      }
    }
    for (int k = 0; k < nb; ++k) visit(b0 + k, rows[k], weights[k], frac[k]);
  }
}

// Writes level-major features `out` (L, N, F): each level's loop stores sequentially. Writing straight into the
// (N, L*F) result would touch every cache line of it once per level (L read-for-ownership passes over the
// whole output); one transpose at the end is far cheaper.
template <typename T, int F>
void forward_impl(const T* points, const int32_t* salt, const T* table, T* out, int64_t n, const GridMeta& meta) {
  const int L = meta.n_levels;
  for (int l = 0; l < L; ++l) {
    const T scale = static_cast<T>(meta.scales[l]);
    const uint32_t res = meta.resolutions[l];
    const uint32_t size = meta.offsets[l + 1] - meta.offsets[l];
    const T* level_table = table + static_cast<size_t>(meta.offsets[l]) * F;
    T* level_out = out + static_cast<size_t>(l) * n * F;
    const bool salted = l >= meta.salted_from;
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for_point_blocks<T, F, false>(points, salt, salted, begin, end, scale, res, size, level_table,
                                    [&](int64_t i, const uint32_t* rows, const T* weights, const T*) {
                                      hashgrid::interpolate_corners<T, F>(level_table, rows, weights, level_out + i * F);
                                    });
    });
  }
}

// `grad_out` is level-major (L, N, F), read sequentially per level.
//
// Table gradients without atomics: a locked add on x86 is a full memory barrier, which serialises the cache
// misses this scatter is made of. Instead each thread scatters its chunk of points into its own copy of the
// level's gradient (thread 0 straight into the result), and the copies are summed afterwards; the copies are
// cleared as they are summed, so they are zero whenever a level starts. Point gradients need no care: a point
// belongs to one thread.
template <typename T, int F>
void backward_impl(const T* grad_out, const T* points, const int32_t* salt, const T* table, T* grad_table,
                   T* grad_points, int64_t n, const GridMeta& meta) {
  const int L = meta.n_levels;
  const int nthreads = n > kGrain ? at::get_num_threads() : 1;
  size_t max_level_len = 0;
  for (int l = 0; l < L; ++l) {
    max_level_len = std::max<size_t>(max_level_len, size_t(meta.offsets[l + 1] - meta.offsets[l]) * F);
  }
  std::vector<T> scratch(grad_table && nthreads > 1 ? (nthreads - 1) * max_level_len : 0, T(0));
  const int64_t chunk = (n + nthreads - 1) / nthreads;  // one chunk per thread, so a thread owns one copy
  for (int l = 0; l < L; ++l) {
    const T scale = static_cast<T>(meta.scales[l]);
    const uint32_t res = meta.resolutions[l];
    const uint32_t size = meta.offsets[l + 1] - meta.offsets[l];
    const size_t level_len = size_t(size) * F;
    const T* level_table = table + static_cast<size_t>(meta.offsets[l]) * F;
    T* level_grad = grad_table ? grad_table + static_cast<size_t>(meta.offsets[l]) * F : nullptr;
    const bool salted = l >= meta.salted_from;
    at::parallel_for(0, n, chunk, [&](int64_t begin, int64_t end) {
      const int tid = at::get_thread_num();
      T* dst = (level_grad == nullptr || tid == 0) ? level_grad : scratch.data() + (tid - 1) * max_level_len;
      const T* level_grad_out = grad_out + static_cast<size_t>(l) * n * F;
      if (grad_points != nullptr) {  // point gradients (and the table's when asked), rows of both prefetched
        for_point_blocks<T, F, true>(points, salt, salted, begin, end, scale, res, size, dst,
                                     [&](int64_t i, const uint32_t* rows, const T* weights, const T* frac) {
                                       const T* g = level_grad_out + i * F;
                                       if (dst != nullptr) hashgrid::scatter_corners<T, F>(dst, rows, weights, g, PlainAdd<T>());
                                       hashgrid::point_gradient<T, F>(level_table, rows, frac, g, scale, grad_points + 3 * i);
                                     }, level_table);
        return;
      }
      if (dst == nullptr) return;
      // Table gradient only (the usual case): blocks with prefetched rows, as in the forward pass.
      for_point_blocks<T, F, true>(points, salt, salted, begin, end, scale, res, size, dst,
                                   [&](int64_t i, const uint32_t* rows, const T* weights, const T*) {
                                     hashgrid::scatter_corners<T, F>(dst, rows, weights, level_grad_out + i * F,
                                                                     PlainAdd<T>());
                                   });
    });
    if (!scratch.empty()) {
      at::parallel_for(0, static_cast<int64_t>(level_len), 1 << 15, [&](int64_t begin, int64_t end) {
        for (int t = 0; t < nthreads - 1; ++t) {
          T* copy = scratch.data() + t * max_level_len;
          for (int64_t j = begin; j < end; ++j) {
            level_grad[j] += copy[j];
            copy[j] = T(0);
          }
        }
      });
    }
  }
}

#define FMN_DISPATCH_F(nf, ...)                                   \
  switch (nf) {                                                   \
    case 1: { constexpr int kF = 1; __VA_ARGS__(); break; }       \
    case 2: { constexpr int kF = 2; __VA_ARGS__(); break; }       \
    case 4: { constexpr int kF = 4; __VA_ARGS__(); break; }       \
    case 8: { constexpr int kF = 8; __VA_ARGS__(); break; }       \
    default: TORCH_CHECK(false, "fastminerf: unsupported features per level ", nf); \
  }

at::Tensor hash_encode_forward_cpu(const at::Tensor& points, const at::Tensor& table, at::IntArrayRef offsets,
                                   at::IntArrayRef resolutions, at::ArrayRef<double> scales, const at::Tensor& salt,
                                   int64_t salted_from) {
  const GridMeta meta = make_grid_meta(offsets, resolutions, scales, table.size(1), salted_from);
  check_hash_inputs(points, table, meta);
  const int32_t* salt_ptr = check_salt(salt, points, meta);
  const int64_t n = points.size(0);
  auto out = at::empty({meta.n_levels, n, meta.n_features}, points.options());  // (L, N, F)
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "hash_encode_forward_cpu", [&] {
    FMN_DISPATCH_F(meta.n_features, [&] {
      forward_impl<scalar_t, kF>(points.data_ptr<scalar_t>(), salt_ptr, table.data_ptr<scalar_t>(),
                                 out.data_ptr<scalar_t>(), n, meta);
    });
  });
  return out.permute({1, 0, 2}).reshape({n, static_cast<int64_t>(meta.n_levels) * meta.n_features});
}

std::tuple<at::Tensor, at::Tensor> hash_encode_backward_cpu(const at::Tensor& grad_out, const at::Tensor& points,
                                                            const at::Tensor& table, at::IntArrayRef offsets,
                                                            at::IntArrayRef resolutions, at::ArrayRef<double> scales,
                                                            const at::Tensor& salt, int64_t salted_from,
                                                            bool table_grad, bool points_grad) {
  const GridMeta meta = make_grid_meta(offsets, resolutions, scales, table.size(1), salted_from);
  check_hash_inputs(points, table, meta);
  const int32_t* salt_ptr = check_salt(salt, points, meta);
  check_hash_grad(grad_out, points, meta);
  const int64_t n = points.size(0);
  auto grad_table = table_grad ? at::zeros_like(table) : at::empty({0}, table.options());
  auto grad_points = points_grad ? at::zeros_like(points) : at::empty({0}, points.options());
  // (N, L*F) -> level-major (L, N, F), so that each level's loop reads its gradients sequentially
  const auto grad_lnf = grad_out.view({n, meta.n_levels, meta.n_features}).permute({1, 0, 2}).contiguous();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "hash_encode_backward_cpu", [&] {
    scalar_t* gt = table_grad ? grad_table.data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = points_grad ? grad_points.data_ptr<scalar_t>() : nullptr;
    FMN_DISPATCH_F(meta.n_features, [&] {
      backward_impl<scalar_t, kF>(grad_lnf.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(), salt_ptr,
                                  table.data_ptr<scalar_t>(), gt, gp, n, meta);
    });
  });
  return {grad_table, grad_points};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastminerf, m) {
  m.def(
      "hash_encode_forward(Tensor points, Tensor table, int[] offsets, int[] resolutions, float[] scales, "
      "Tensor salt, int salted_from) -> Tensor");
  m.def(
      "hash_encode_backward(Tensor grad_out, Tensor points, Tensor table, int[] offsets, int[] resolutions, "
      "float[] scales, Tensor salt, int salted_from, bool table_grad, bool points_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastminerf, CPU, m) {
  m.impl("hash_encode_forward", &hash_encode_forward_cpu);
  m.impl("hash_encode_backward", &hash_encode_backward_cpu);
}

}  // namespace fastminerf
