// CUDA implementations of the fused MLP head ops (registered for the CUDA dispatch key; the schemas are declared in
// mlp_head_cpu.cpp). Built only when the extension is compiled with CUDA. The kernels give each sample's hidden
// row and masked hidden gradient; the per-ray and weight gradients are an index_add and two matrix products.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <optional>
#include <tuple>

#include "mlp_head_checks.h"
#include "mlp_head_cuda.h"

namespace fastminerf {
namespace {

const int64_t* ray_index_data(const at::Tensor* ri) { return ri != nullptr ? ri->data_ptr<int64_t>() : nullptr; }

at::Tensor mlp_head_forward_cuda_op(const at::Tensor& x, const at::Tensor& pre,
                                    const std::optional<at::Tensor>& ray_indices, const at::Tensor& w1,
                                    const at::Tensor& w2, const at::Tensor& b2) {
  const at::Tensor* ri = check_mlp_head_inputs(x, pre, ray_indices, w1, w2, b2);
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty({x.size(0), w2.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_head_forward_cuda", [&] {
    mlp_head_forward_cuda<scalar_t>(x.data_ptr<scalar_t>(), pre.data_ptr<scalar_t>(), pre.size(0), ray_index_data(ri),
                                    w1.data_ptr<scalar_t>(), w2.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(),
                                    x.size(0), static_cast<int>(x.size(1)), static_cast<int>(w1.size(0)),
                                    static_cast<int>(w2.size(0)), y.data_ptr<scalar_t>(),
                                    at::cuda::getCurrentCUDAStream());
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_head_backward_cuda_op(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& pre, const std::optional<at::Tensor>& ray_indices,
    const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& b2, bool x_grad) {
  const at::Tensor* ri = check_mlp_head_inputs(x, pre, ray_indices, w1, w2, b2);
  check_mlp_head_grad(grad_y, x, w2);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t S = x.size(0), H = w1.size(0);
  auto hidden = at::empty({S, H}, x.options());
  auto grad_hidden = at::empty({S, H}, x.options());
  auto grad_x = x_grad ? at::empty_like(x) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_head_backward_cuda", [&] {
    mlp_head_backward_cuda<scalar_t>(grad_y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), pre.data_ptr<scalar_t>(),
                                     pre.size(0), ray_index_data(ri), w1.data_ptr<scalar_t>(),
                                     w2.data_ptr<scalar_t>(), S,
                                     static_cast<int>(x.size(1)), static_cast<int>(H), static_cast<int>(w2.size(0)),
                                     hidden.data_ptr<scalar_t>(), grad_hidden.data_ptr<scalar_t>(),
                                     x_grad ? grad_x.data_ptr<scalar_t>() : nullptr, at::cuda::getCurrentCUDAStream());
  });
  auto grad_pre = ri != nullptr ? at::zeros_like(pre).index_add_(0, *ri, grad_hidden) : grad_hidden;
  return {grad_x, grad_pre, grad_hidden.t().mm(x), grad_y.t().mm(hidden), grad_y.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastminerf, CUDA, m) {
  m.impl("mlp_head_forward", &mlp_head_forward_cuda_op);
  m.impl("mlp_head_backward", &mlp_head_backward_cuda_op);
}

}  // namespace fastminerf
