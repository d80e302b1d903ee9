// Occupancy-grid CUDA kernels: one thread per ray for the two marcher passes (count, then write), one thread
// per update for the EMA scatter, one per cell / byte for the rest. The per-ray walk is the shared code in
// fastminerf/occupancy.h, the same function the CPU loop runs.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "fastminerf/occupancy.h"
#include "occupancy_cuda.h"

namespace fastminerf {
namespace {

constexpr int kThreads = 256;
constexpr int kMarchThreads = 128;  // long, divergent per-thread loops: smaller blocks schedule better

using occupancy::GridSpec;
using occupancy::MarchParams;

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("fastminerf: ") + what + ": " + cudaGetErrorString(err));
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

struct NoEmit {
  __device__ void operator()(int64_t, float, float) const {}
};

struct WriteEmit {
  int64_t ray;
  int64_t* ray_indices;
  float* t_starts;
  float* t_ends;
  __device__ void operator()(int64_t j, float t0, float t1) const {
    ray_indices[j] = ray;
    t_starts[j] = t0;
    t_ends[j] = t1;
  }
};

__global__ void march_count_kernel(int64_t n, const float* __restrict__ origins, const float* __restrict__ directions,
                                   const float* __restrict__ near, const float* __restrict__ far,
                                   const uint8_t* __restrict__ bits, GridSpec grid, MarchParams params,
                                   int64_t* __restrict__ counts) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  counts[i] = occupancy::march_ray(grid, params, bits, origins + 3 * i, directions + 3 * i, near[i], far[i], NoEmit());
}

__global__ void march_write_kernel(int64_t n, const float* __restrict__ origins, const float* __restrict__ directions,
                                   const float* __restrict__ near, const float* __restrict__ far,
                                   const uint8_t* __restrict__ bits, GridSpec grid, MarchParams params,
                                   const int64_t* __restrict__ offsets, int64_t* __restrict__ ray_indices,
                                   float* __restrict__ t_starts, float* __restrict__ t_ends) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t start = offsets[i];
  if (offsets[i + 1] == start) return;
  occupancy::march_ray(grid, params, bits, origins + 3 * i, directions + 3 * i, near[i], far[i],
                       WriteEmit{i, ray_indices + start, t_starts + start, t_ends + start});
}

__device__ void atomic_max_float(float* addr, float v) {
  int* as_int = reinterpret_cast<int*>(addr);
  int old = *as_int;
  while (v > __int_as_float(old)) {
    const int assumed = old;
    old = atomicCAS(as_int, assumed, __float_as_int(v));
    if (old == assumed) break;
  }
}

__global__ void ema_scatter_kernel(int64_t m, const int64_t* __restrict__ indices, const float* __restrict__ values,
                                   float* __restrict__ new_max, uint8_t* __restrict__ visited) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= m) return;
  const int64_t c = indices[j];
  atomic_max_float(new_max + c, values[j]);
  visited[c] = 1;
}

__global__ void ema_apply_kernel(int64_t n_cells, const float* __restrict__ occs, const float* __restrict__ new_max,
                                 const uint8_t* __restrict__ visited, float decay, float* __restrict__ out) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= n_cells) return;
  out[c] = occupancy::ema_cell(occs[c], visited[c] != 0, new_max[c], decay);
}

__global__ void bitfield_kernel(int64_t levels, int64_t cells, int64_t bytes, const float* __restrict__ occs,
                                float threshold, uint8_t* __restrict__ out) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= levels * bytes) return;
  const int64_t l = b / bytes;
  out[b] = occupancy::pack_byte(occs + l * cells, cells, b % bytes, threshold);
}

}  // namespace

void march_rays_count_cuda(const float* origins, const float* directions, const float* near, const float* far,
                           const uint8_t* bits, int64_t n, const GridSpec& grid, const MarchParams& params,
                           int64_t* counts, cudaStream_t stream) {
  if (n == 0) return;
  march_count_kernel<<<blocks_for(n, kMarchThreads), kMarchThreads, 0, stream>>>(n, origins, directions, near, far,
                                                                                 bits, grid, params, counts);
  check_launch("march_rays count kernel");
}

void march_rays_write_cuda(const float* origins, const float* directions, const float* near, const float* far,
                           const uint8_t* bits, int64_t n, const GridSpec& grid, const MarchParams& params,
                           const int64_t* offsets, int64_t* ray_indices, float* t_starts, float* t_ends,
                           cudaStream_t stream) {
  if (n == 0) return;
  march_write_kernel<<<blocks_for(n, kMarchThreads), kMarchThreads, 0, stream>>>(
      n, origins, directions, near, far, bits, grid, params, offsets, ray_indices, t_starts, t_ends);
  check_launch("march_rays write kernel");
}

void occupancy_ema_cuda(const float* occs, const int64_t* indices, const float* values, int64_t n_cells, int64_t m,
                        float decay, float* new_max, uint8_t* visited, float* out, cudaStream_t stream) {
  if (m > 0) {
    ema_scatter_kernel<<<blocks_for(m, kThreads), kThreads, 0, stream>>>(m, indices, values, new_max, visited);
    check_launch("occupancy_ema scatter kernel");
  }
  if (n_cells > 0) {
    ema_apply_kernel<<<blocks_for(n_cells, kThreads), kThreads, 0, stream>>>(n_cells, occs, new_max, visited, decay,
                                                                            out);
    check_launch("occupancy_ema apply kernel");
  }
}

void occupancy_bitfield_cuda(const float* occs, int64_t levels, int64_t cells, float threshold, uint8_t* out,
                             cudaStream_t stream) {
  const int64_t bytes = (cells + 7) / 8;
  if (levels * bytes == 0) return;
  bitfield_kernel<<<blocks_for(levels * bytes, kThreads), kThreads, 0, stream>>>(levels, cells, bytes, occs,
                                                                                 threshold, out);
  check_launch("occupancy_bitfield kernel");
}

}  // namespace fastminerf
