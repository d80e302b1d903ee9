// Hash-grid encoding CUDA kernels: one thread per (point, level), blockIdx.y = level as in tiny-cuda-nn, so a
// block reads a single level's table. The per-point math is the shared code in fastminerf/hash_grid.h.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "fastminerf/hash_grid.h"
#include "hash_grid_cuda.h"

namespace fastminerf {
namespace {

constexpr int kThreads = 256;

using hashgrid::GridMeta;

struct DeviceAtomicAdd {
  template <typename T>
  __device__ void operator()(T* addr, T v) const {
    atomicAdd(addr, v);
  }
};

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("fastminerf: ") + what + ": " + cudaGetErrorString(err));
}

// The salt of point i at level l (0 on unsalted levels, where `salt` may be null).
__device__ inline uint32_t salt_of(const int32_t* salt, int64_t i, int l, const GridMeta& meta) {
  return l >= meta.salted_from ? static_cast<uint32_t>(salt[i]) : 0u;
}

template <typename T, int F>
__global__ void forward_kernel(int64_t n, const T* __restrict__ points, const int32_t* __restrict__ salt,
                               const T* __restrict__ table, T* __restrict__ out, GridMeta meta) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int l = blockIdx.y;
  if (i >= n) return;
  const uint32_t size = meta.offsets[l + 1] - meta.offsets[l];
  hashgrid::encode_point_level<T, F>(points + 3 * i, table + static_cast<size_t>(meta.offsets[l]) * F, size,
                                     meta.resolutions[l], static_cast<T>(meta.scales[l]),
                                     out + static_cast<size_t>(i) * meta.n_levels * F + l * F, salt_of(salt, i, l, meta),
                                     l >= meta.salted_from);
}

template <typename T, int F>
__global__ void backward_table_kernel(int64_t n, const T* __restrict__ grad_out, const T* __restrict__ points,
                                      const int32_t* __restrict__ salt, const T* __restrict__ table,
                                      T* __restrict__ grad_table, GridMeta meta) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int l = blockIdx.y;
  if (i >= n) return;
  const uint32_t size = meta.offsets[l + 1] - meta.offsets[l];
  const size_t level_start = static_cast<size_t>(meta.offsets[l]) * F;
  hashgrid::encode_point_level_backward<T, F>(points + 3 * i, table + level_start, grad_table + level_start,
                                              grad_out + static_cast<size_t>(i) * meta.n_levels * F + l * F, size,
                                              meta.resolutions[l], static_cast<T>(meta.scales[l]), nullptr,
                                              DeviceAtomicAdd(), salt_of(salt, i, l, meta), l >= meta.salted_from);
}

// Input gradients: one thread per point walks all levels, so no atomics are needed.
template <typename T, int F>
__global__ void backward_points_kernel(int64_t n, const T* __restrict__ grad_out, const T* __restrict__ points,
                                       const int32_t* __restrict__ salt, const T* __restrict__ table,
                                       T* __restrict__ grad_points, GridMeta meta) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  T g[3] = {T(0), T(0), T(0)};
  for (int l = 0; l < meta.n_levels; ++l) {
    const uint32_t size = meta.offsets[l + 1] - meta.offsets[l];
    hashgrid::encode_point_level_backward<T, F>(points + 3 * i, table + static_cast<size_t>(meta.offsets[l]) * F,
                                                nullptr, grad_out + static_cast<size_t>(i) * meta.n_levels * F + l * F,
                                                size, meta.resolutions[l], static_cast<T>(meta.scales[l]), g,
                                                DeviceAtomicAdd(), salt_of(salt, i, l, meta), l >= meta.salted_from);
  }
  for (int d = 0; d < 3; ++d) grad_points[3 * i + d] = g[d];
}

template <typename Fn>
void dispatch_features(int n_features, Fn fn) {
  switch (n_features) {
    case 1: fn(std::integral_constant<int, 1>()); break;
    case 2: fn(std::integral_constant<int, 2>()); break;
    case 4: fn(std::integral_constant<int, 4>()); break;
    case 8: fn(std::integral_constant<int, 8>()); break;
    default: throw std::invalid_argument("fastminerf: features per level must be 1, 2, 4 or 8");
  }
}

}  // namespace

template <typename T>
void hash_encode_forward_cuda(const T* points, const int32_t* salt, const T* table, T* out, int64_t n,
                              const GridMeta& meta, cudaStream_t stream) {
  if (n == 0) return;
  const dim3 blocks(static_cast<unsigned>((n + kThreads - 1) / kThreads), meta.n_levels);
  dispatch_features(meta.n_features, [&](auto f) {
    forward_kernel<T, decltype(f)::value><<<blocks, kThreads, 0, stream>>>(n, points, salt, table, out, meta);
  });
  check_launch("hash_encode_forward kernel");
}

template <typename T>
void hash_encode_backward_cuda(const T* grad_out, const T* points, const int32_t* salt, const T* table,
                               T* grad_table, T* grad_points, int64_t n, const GridMeta& meta, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_features(meta.n_features, [&](auto f) {
    constexpr int F = decltype(f)::value;
    if (grad_table != nullptr) {
      const dim3 blocks(static_cast<unsigned>((n + kThreads - 1) / kThreads), meta.n_levels);
      backward_table_kernel<T, F><<<blocks, kThreads, 0, stream>>>(n, grad_out, points, salt, table, grad_table, meta);
    }
    if (grad_points != nullptr) {
      const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
      backward_points_kernel<T, F><<<blocks, kThreads, 0, stream>>>(n, grad_out, points, salt, table, grad_points, meta);
    }
  });
  check_launch("hash_encode_backward kernel");
}

template void hash_encode_forward_cuda<float>(const float*, const int32_t*, const float*, float*, int64_t,
                                              const GridMeta&, cudaStream_t);
template void hash_encode_forward_cuda<double>(const double*, const int32_t*, const double*, double*, int64_t,
                                               const GridMeta&, cudaStream_t);
template void hash_encode_backward_cuda<float>(const float*, const float*, const int32_t*, const float*, float*,
                                               float*, int64_t, const GridMeta&, cudaStream_t);
template void hash_encode_backward_cuda<double>(const double*, const double*, const int32_t*, const double*,
                                                double*, double*, int64_t, const GridMeta&, cudaStream_t);

}  // namespace fastminerf
