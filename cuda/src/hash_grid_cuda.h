// Launchers of the hash-grid CUDA kernels. Torch-free: raw pointers and a stream, so that CMake can compile
// the kernels with nvcc alone; hash_grid_cuda_ops.cpp wraps them as torch ops on CUDA tensors.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastminerf/hash_grid.h"

namespace fastminerf {

// points (N, 3), table (rows, F) -> out (N, L*F)
template <typename T>
void hash_encode_forward_cuda(const T* points, const int32_t* salt, const T* table, T* out, int64_t n,
                              const hashgrid::GridMeta& meta, cudaStream_t stream);

// `salt`: int32 (N,) per-point salts of the salted levels (GridMeta::salted_from), null when none.
// grad_out (N, L*F) -> grad_table (rows, F) zero-initialised (or null), grad_points (N, 3) zero-initialised (or null)
template <typename T>
void hash_encode_backward_cuda(const T* grad_out, const T* points, const int32_t* salt, const T* table,
                               T* grad_table, T* grad_points, int64_t n, const hashgrid::GridMeta& meta,
                               cudaStream_t stream);

}  // namespace fastminerf
