// Launchers of the occupancy-grid CUDA kernels. Torch-free: raw pointers and a stream, so that CMake can compile
// the kernels with nvcc alone; occupancy_cuda_ops.cpp wraps them as torch ops on CUDA tensors.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastminerf/occupancy.h"

namespace fastminerf {

// Pass 1 of the marcher: counts (N,) samples per ray. origins, directions (N, 3); near, far (N,);
// bits (L, bytes_per_level).
void march_rays_count_cuda(const float* origins, const float* directions, const float* near, const float* far,
                           const uint8_t* bits, int64_t n, const occupancy::GridSpec& grid,
                           const occupancy::MarchParams& params, int64_t* counts, cudaStream_t stream);

// Pass 2: the same walk, writing ray i's samples at offsets[i] .. offsets[i+1]-1 of ray_indices, t_starts,
// t_ends (S,). offsets (N+1,) is the exclusive cumulative sum of the counts.
void march_rays_write_cuda(const float* origins, const float* directions, const float* near, const float* far,
                           const uint8_t* bits, int64_t n, const occupancy::GridSpec& grid,
                           const occupancy::MarchParams& params, const int64_t* offsets, int64_t* ray_indices,
                           float* t_starts, float* t_ends, cudaStream_t stream);

// EMA update: new_max (C,) filled with -inf and visited (C,) with 0 by the caller; occs, out (C,);
// indices, values (M,) (indices already checked to lie in [0, C)).
void occupancy_ema_cuda(const float* occs, const int64_t* indices, const float* values, int64_t n_cells, int64_t m,
                        float decay, float* new_max, uint8_t* visited, float* out, cudaStream_t stream);

// Bitfield (levels, bytes) from occs (levels * cells,): bit set where occ > threshold.
void occupancy_bitfield_cuda(const float* occs, int64_t levels, int64_t cells, float threshold, uint8_t* out,
                             cudaStream_t stream);

}  // namespace fastminerf
