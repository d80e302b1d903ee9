// Launchers of the compositing CUDA kernels. Torch-free: raw pointers and a stream, so that CMake can compile
// the kernels with nvcc alone; composite_cuda_ops.cpp wraps them as torch ops on CUDA tensors.
// Shapes: N rays, S packed samples; every pointer is to contiguous device memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastminerf {

// offsets (N+1,), sigmas (S,), rgbs (S, 3), t_starts (S,), t_ends (S,) ->
// color (N, 3), opacity (N,), depth (N,), weights (S,) zero-initialised, trans_end (N,), n_active (N,)
template <typename T>
void composite_forward_cuda(const int64_t* offsets, const T* sigmas, const T* rgbs, const T* t_starts,
                            const T* t_ends, T threshold, int64_t n_rays, int64_t n_samples, T* color, T* opacity,
                            T* depth, T* weights, T* trans_end, int64_t* n_active, cudaStream_t stream);

// grad_color (N, 3), grad_opacity (N,), grad_depth (N,), grad_weights (S,): each may be null (zero gradient).
// -> grad_sigmas (S,) and grad_rgbs (S, 3), zero-initialised, each may be null (not wanted).
template <typename T>
void composite_backward_cuda(const int64_t* offsets, const T* grad_color, const T* grad_opacity, const T* grad_depth,
                             const T* grad_weights, const T* rgbs, const T* t_starts, const T* t_ends,
                             const T* weights, const T* trans_end, const int64_t* n_active, int64_t n_rays,
                             int64_t n_samples, T* grad_sigmas, T* grad_rgbs, cudaStream_t stream);

}  // namespace fastminerf
