// Fused MLP head CUDA kernels: one thread per sample runs the per-sample code of fastminerf/mlp_head.h (the same
// code the CPU's per-sample loop runs), its hidden row in local memory. The backward writes each sample's hidden
// row and masked hidden gradient; the weight gradients are then two matrix products (cuBLAS, in the op wrapper)
// rather than atomics into a few thousand shared weights.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "fastminerf/mlp_head.h"
#include "mlp_head_cuda.h"

namespace fastminerf {
namespace {

constexpr int kThreads = 128;

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("fastminerf: ") + what + ": " + cudaGetErrorString(err));
}

// The per-ray row of sample s. The CPU op checks every index against the row count (host memory, free to read); here
// reading them back would cost a sync, so an index outside [0, n_rows) is clamped, as the compositing kernels clamp
// malformed offsets: never an out-of-bounds read.
__device__ __forceinline__ int64_t row_of(const int64_t* __restrict__ ray_indices, int64_t s, int64_t n_rows) {
  return ray_indices != nullptr ? fmn_clamp<int64_t>(ray_indices[s], 0, n_rows - 1) : s;
}

template <typename T>
__global__ void forward_kernel(int64_t n, const T* __restrict__ x, const T* __restrict__ pre, int64_t n_rows,
                               const int64_t* __restrict__ ray_indices, const T* __restrict__ w1,
                               const T* __restrict__ w2, const T* __restrict__ b2, int P, int H, int O,
                               T* __restrict__ y) {
  const int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (s >= n) return;
  T h[mlphead::kMaxHidden];
  mlphead::hidden(x + s * P, pre + row_of(ray_indices, s, n_rows) * H, w1, P, H, h);
  mlphead::output(h, w2, b2, H, O, y + s * O);
}

template <typename T>
__global__ void backward_kernel(int64_t n, const T* __restrict__ grad_y, const T* __restrict__ x,
                                const T* __restrict__ pre, int64_t n_rows, const int64_t* __restrict__ ray_indices,
                                const T* __restrict__ w1, const T* __restrict__ w2, int P, int H, int O,
                                T* __restrict__ hidden, T* __restrict__ grad_hidden, T* __restrict__ grad_x) {
  const int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (s >= n) return;
  T* h = hidden + s * H;
  mlphead::hidden(x + s * P, pre + row_of(ray_indices, s, n_rows) * H, w1, P, H, h);
  mlphead::backward(grad_y + s * O, h, w1, w2, P, H, O, grad_hidden + s * H, grad_x != nullptr ? grad_x + s * P : nullptr);
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <typename T>
void mlp_head_forward_cuda(const T* x, const T* pre, int64_t n_rows, const int64_t* ray_indices, const T* w1,
                           const T* w2, const T* b2, int64_t n_samples, int P, int H, int O, T* y,
                           cudaStream_t stream) {
  if (n_samples == 0) return;
  forward_kernel<T><<<blocks_for(n_samples), kThreads, 0, stream>>>(n_samples, x, pre, n_rows, ray_indices, w1, w2, b2,
                                                                    P, H, O, y);
  check_launch("mlp_head_forward kernel");
}

template <typename T>
void mlp_head_backward_cuda(const T* grad_y, const T* x, const T* pre, int64_t n_rows, const int64_t* ray_indices,
                            const T* w1, const T* w2, int64_t n_samples, int P, int H, int O, T* hidden,
                            T* grad_hidden, T* grad_x, cudaStream_t stream) {
  if (n_samples == 0) return;
  backward_kernel<T><<<blocks_for(n_samples), kThreads, 0, stream>>>(n_samples, grad_y, x, pre, n_rows, ray_indices,
                                                                     w1, w2, P, H, O, hidden, grad_hidden, grad_x);
  check_launch("mlp_head_backward kernel");
}

template void mlp_head_forward_cuda<float>(const float*, const float*, int64_t, const int64_t*, const float*,
                                           const float*, const float*, int64_t, int, int, int, float*, cudaStream_t);
template void mlp_head_forward_cuda<double>(const double*, const double*, int64_t, const int64_t*, const double*,
                                            const double*, const double*, int64_t, int, int, int, double*,
                                            cudaStream_t);
template void mlp_head_backward_cuda<float>(const float*, const float*, const float*, int64_t, const int64_t*,
                                            const float*, const float*, int64_t, int, int, int, float*, float*, float*,
                                            cudaStream_t);
template void mlp_head_backward_cuda<double>(const double*, const double*, const double*, int64_t, const int64_t*,
                                             const double*, const double*, int64_t, int, int, int, double*, double*,
                                             double*, cudaStream_t);

}  // namespace fastminerf
