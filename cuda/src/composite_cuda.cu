// Compositing CUDA kernels: one thread per ray walks its packed samples with the shared per-ray code of
// fastminerf/composite.h (the same code the CPU loop runs), so no thread writes another ray's outputs and no
// atomics are needed. A ray's range is clamped to [0, S] so that malformed offsets cannot read out of bounds
// (the CPU op checks them instead; reading them back here would synchronise the stream).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "composite_cuda.h"
#include "fastminerf/composite.h"

namespace fastminerf {
namespace {

constexpr int kThreads = 128;  // rays per block: short rays make occupancy, not block size, the limit

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("fastminerf: ") + what + ": " + cudaGetErrorString(err));
}

__device__ __forceinline__ void ray_range(const int64_t* __restrict__ offsets, int64_t r, int64_t n_samples,
                                          int64_t* begin, int64_t* end) {
  const int64_t b = fmn_clamp<int64_t>(offsets[r], 0, n_samples);
  *begin = b;
  *end = fmn_clamp<int64_t>(offsets[r + 1], b, n_samples);
}

template <typename T>
__global__ void forward_kernel(int64_t n_rays, int64_t n_samples, const int64_t* __restrict__ offsets,
                               const T* __restrict__ sigmas, const T* __restrict__ rgbs,
                               const T* __restrict__ t_starts, const T* __restrict__ t_ends, T threshold,
                               T* __restrict__ color, T* __restrict__ opacity, T* __restrict__ depth,
                               T* __restrict__ weights, T* __restrict__ trans_end, int64_t* __restrict__ n_active) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n_rays) return;
  int64_t begin, end;
  ray_range(offsets, r, n_samples, &begin, &end);
  const auto out = composite::forward_ray<T>(begin, end, sigmas, rgbs, t_starts, t_ends, threshold, weights);
  color[3 * r + 0] = out.color[0];
  color[3 * r + 1] = out.color[1];
  color[3 * r + 2] = out.color[2];
  opacity[r] = out.opacity;
  depth[r] = out.depth;
  trans_end[r] = out.trans_end;
  n_active[r] = out.n_active;
}

template <typename T>
__global__ void backward_kernel(int64_t n_rays, int64_t n_samples, const int64_t* __restrict__ offsets,
                                const T* __restrict__ grad_color, const T* __restrict__ grad_opacity,
                                const T* __restrict__ grad_depth, const T* __restrict__ grad_weights,
                                const T* __restrict__ rgbs, const T* __restrict__ t_starts,
                                const T* __restrict__ t_ends, const T* __restrict__ weights,
                                const T* __restrict__ trans_end, const int64_t* __restrict__ n_active,
                                T* __restrict__ grad_sigmas, T* __restrict__ grad_rgbs) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n_rays) return;
  int64_t begin, end;
  ray_range(offsets, r, n_samples, &begin, &end);
  const int64_t k = fmn_clamp<int64_t>(n_active[r], 0, end - begin);
  composite::backward_ray<T>(begin, k, trans_end[r], grad_color ? grad_color + 3 * r : nullptr,
                             grad_opacity ? grad_opacity + r : nullptr, grad_depth ? grad_depth + r : nullptr,
                             grad_weights, rgbs, t_starts, t_ends, weights, grad_sigmas, grad_rgbs);
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
void composite_forward_cuda(const int64_t* offsets, const T* sigmas, const T* rgbs, const T* t_starts,
                            const T* t_ends, T threshold, int64_t n_rays, int64_t n_samples, T* color, T* opacity,
                            T* depth, T* weights, T* trans_end, int64_t* n_active, cudaStream_t stream) {
  if (n_rays == 0) return;
  forward_kernel<T><<<blocks_for(n_rays), kThreads, 0, stream>>>(n_rays, n_samples, offsets, sigmas, rgbs, t_starts,
                                                                 t_ends, threshold, color, opacity, depth, weights,
                                                                 trans_end, n_active);
  check_launch("composite_forward kernel");
}

template <typename T>
void composite_backward_cuda(const int64_t* offsets, const T* grad_color, const T* grad_opacity, const T* grad_depth,
                             const T* grad_weights, const T* rgbs, const T* t_starts, const T* t_ends,
                             const T* weights, const T* trans_end, const int64_t* n_active, int64_t n_rays,
                             int64_t n_samples, T* grad_sigmas, T* grad_rgbs, cudaStream_t stream) {
  if (n_rays == 0 || (grad_sigmas == nullptr && grad_rgbs == nullptr)) return;
  backward_kernel<T><<<blocks_for(n_rays), kThreads, 0, stream>>>(n_rays, n_samples, offsets, grad_color,
                                                                  grad_opacity, grad_depth, grad_weights, rgbs,
                                                                  t_starts, t_ends, weights, trans_end, n_active,
                                                                  grad_sigmas, grad_rgbs);
  check_launch("composite_backward kernel");
}

#define FMN_INSTANTIATE(T)                                                                                        \
  template void composite_forward_cuda<T>(const int64_t*, const T*, const T*, const T*, const T*, T, int64_t,      \
                                          int64_t, T*, T*, T*, T*, T*, int64_t*, cudaStream_t);                   \
  template void composite_backward_cuda<T>(const int64_t*, const T*, const T*, const T*, const T*, const T*,       \
                                           const T*, const T*, const T*, const T*, const int64_t*, int64_t,        \
                                           int64_t, T*, T*, cudaStream_t);
FMN_INSTANTIATE(float)
FMN_INSTANTIATE(double)
#undef FMN_INSTANTIATE

}  // namespace fastminerf
