// Launchers of the fused MLP head's CUDA kernels. Torch-free: raw pointers and a stream, so that CMake can compile
// the kernels with nvcc alone; mlp_head_cuda_ops.cpp wraps them as torch ops on CUDA tensors.
// Shapes: S samples, P inputs, H hidden (<= mlphead::kMaxHidden), O outputs, N rows of `pre`; `ray_indices` (S,) or
// null (row s). Ray indices are not checked here (that would read them back): one outside [0, N) is clamped into it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastminerf {

// x (S, P), pre (N, H), w1 (H, P), w2 (O, H), b2 (O,) -> y (S, O)
template <typename T>
void mlp_head_forward_cuda(const T* x, const T* pre, int64_t n_rows, const int64_t* ray_indices, const T* w1,
                           const T* w2, const T* b2, int64_t n_samples, int P, int H, int O, T* y, cudaStream_t stream);

// grad_y (S, O) -> hidden (S, H) and the masked hidden gradient dh (S, H) of every sample, and grad_x (S, P) (or
// null). The weight and per-ray gradients are matrix products of these, formed by the caller.
template <typename T>
void mlp_head_backward_cuda(const T* grad_y, const T* x, const T* pre, int64_t n_rows, const int64_t* ray_indices,
                            const T* w1, const T* w2, int64_t n_samples, int P, int H, int O, T* hidden,
                            T* grad_hidden, T* grad_x, cudaStream_t stream);

}  // namespace fastminerf
