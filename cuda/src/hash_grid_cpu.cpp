// Hash-grid encoding: op schema and the OpenMP CPU implementation. The per-point math is in
// cuda/include/fastminerf/hash_grid.h and is shared with hash_grid_cuda.cu.
//
// Loop order follows tiny-cuda-nn: levels outside, points inside, so one level's table (at most
// 2^log2_T * F values) stays in cache while all points read it. Threads come from at::parallel_for,
// i.e. PyTorch's own OpenMP pool (one OpenMP runtime in the process, sized by torch.set_num_threads).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include "fastminerf/hash_grid.h"
#include "op_utils.h"

namespace fastminerf {
namespace {

using hashgrid::GridMeta;

// Lock-free add for the table gradient, where two points may update one row at once.
template <typename T>
struct AtomicAdd {
  inline void operator()(T* addr, T v) const {
    T expected;
    __atomic_load(addr, &expected, __ATOMIC_RELAXED);
    T desired;
    do {
      desired = expected + v;
    } while (!__atomic_compare_exchange(addr, &expected, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  }
};

template <typename T>
struct PlainAdd {
  inline void operator()(T* addr, T v) const { *addr += v; }
};

constexpr int64_t kGrain = 2048;  // points per parallel chunk: enough work to hide scheduling cost

template <typename T, int F>
void forward_impl(const T* points, const T* table, T* out, int64_t n, const GridMeta& meta) {
  const int L = meta.n_levels;
  for (int l = 0; l < L; ++l) {
    const T scale = static_cast<T>(meta.scales[l]);
    const uint32_t res = meta.resolutions[l];
    const uint32_t size = meta.offsets[l + 1] - meta.offsets[l];
    const T* level_table = table + static_cast<size_t>(meta.offsets[l]) * F;
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        hashgrid::encode_point_level<T, F>(points + 3 * i, level_table, size, res, scale,
                                           out + static_cast<size_t>(i) * L * F + l * F);
      }
    });
  }
}

template <typename T, int F, typename AddFn>
void backward_impl(const T* grad_out, const T* points, const T* table, T* grad_table, T* grad_points, int64_t n,
                   const GridMeta& meta) {
  const int L = meta.n_levels;
  for (int l = 0; l < L; ++l) {
    const T scale = static_cast<T>(meta.scales[l]);
    const uint32_t res = meta.resolutions[l];
    const uint32_t size = meta.offsets[l + 1] - meta.offsets[l];
    const T* level_table = table + static_cast<size_t>(meta.offsets[l]) * F;
    T* level_grad = grad_table ? grad_table + static_cast<size_t>(meta.offsets[l]) * F : nullptr;
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        hashgrid::encode_point_level_backward<T, F>(points + 3 * i, level_table, level_grad,
                                                    grad_out + static_cast<size_t>(i) * L * F + l * F, size, res,
                                                    scale, grad_points ? grad_points + 3 * i : nullptr, AddFn());
      }
    });
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
                                   at::IntArrayRef resolutions, at::ArrayRef<double> scales) {
  const GridMeta meta = make_grid_meta(offsets, resolutions, scales, table.size(1));
  check_hash_inputs(points, table, meta);
  const int64_t n = points.size(0);
  auto out = at::empty({n, static_cast<int64_t>(meta.n_levels) * meta.n_features}, points.options());
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "hash_encode_forward_cpu", [&] {
    FMN_DISPATCH_F(meta.n_features, [&] {
      forward_impl<scalar_t, kF>(points.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(),
                                 out.data_ptr<scalar_t>(), n, meta);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hash_encode_backward_cpu(const at::Tensor& grad_out, const at::Tensor& points,
                                                            const at::Tensor& table, at::IntArrayRef offsets,
                                                            at::IntArrayRef resolutions, at::ArrayRef<double> scales,
                                                            bool table_grad, bool points_grad) {
  const GridMeta meta = make_grid_meta(offsets, resolutions, scales, table.size(1));
  check_hash_inputs(points, table, meta);
  check_hash_grad(grad_out, points, meta);
  const int64_t n = points.size(0);
  auto grad_table = table_grad ? at::zeros_like(table) : at::empty({0}, table.options());
  auto grad_points = points_grad ? at::zeros_like(points) : at::empty({0}, points.options());
  const bool parallel = at::get_num_threads() > 1 && n > kGrain;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "hash_encode_backward_cpu", [&] {
    scalar_t* gt = table_grad ? grad_table.data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = points_grad ? grad_points.data_ptr<scalar_t>() : nullptr;
    FMN_DISPATCH_F(meta.n_features, [&] {
      if (parallel) {
        backward_impl<scalar_t, kF, AtomicAdd<scalar_t>>(grad_out.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(),
                                                         table.data_ptr<scalar_t>(), gt, gp, n, meta);
      } else {
        backward_impl<scalar_t, kF, PlainAdd<scalar_t>>(grad_out.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(),
                                                        table.data_ptr<scalar_t>(), gt, gp, n, meta);
      }
    });
  });
  return {grad_table, grad_points};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastminerf, m) {
  m.def(
      "hash_encode_forward(Tensor points, Tensor table, int[] offsets, int[] resolutions, float[] scales) -> "
      "Tensor");
  m.def(
      "hash_encode_backward(Tensor grad_out, Tensor points, Tensor table, int[] offsets, int[] resolutions, "
      "float[] scales, bool table_grad, bool points_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastminerf, CPU, m) {
  m.impl("hash_encode_forward", &hash_encode_forward_cpu);
  m.impl("hash_encode_backward", &hash_encode_backward_cpu);
}

}  // namespace fastminerf
