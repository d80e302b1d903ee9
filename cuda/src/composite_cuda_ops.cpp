// CUDA implementations of the compositing ops (registered for the CUDA dispatch key; the schemas are declared
// in composite_cpu.cpp). Built only when the extension is compiled with CUDA.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <optional>
#include <tuple>

#include "composite_checks.h"
#include "composite_cuda.h"

namespace fastminerf {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_forward_cuda_op(
    const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_starts, const at::Tensor& t_ends,
    const at::Tensor& offsets, double threshold) {
  check_composite_inputs(sigmas, rgbs, t_starts, t_ends, offsets);
  const c10::cuda::CUDAGuard guard(sigmas.device());
  const int64_t n = offsets.size(0) - 1;
  const int64_t s = sigmas.size(0);
  auto color = at::empty({n, 3}, sigmas.options());
  auto opacity = at::empty({n}, sigmas.options());
  auto depth = at::empty({n}, sigmas.options());
  auto weights = at::zeros_like(sigmas);
  auto trans_end = at::empty({n}, sigmas.options());
  auto n_active = at::empty({n}, offsets.options());
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_forward_cuda", [&] {
    composite_forward_cuda<scalar_t>(offsets.data_ptr<int64_t>(), sigmas.data_ptr<scalar_t>(),
                                     rgbs.data_ptr<scalar_t>(), t_starts.data_ptr<scalar_t>(),
                                     t_ends.data_ptr<scalar_t>(), static_cast<scalar_t>(threshold), n, s,
                                     color.data_ptr<scalar_t>(), opacity.data_ptr<scalar_t>(),
                                     depth.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
                                     trans_end.data_ptr<scalar_t>(), n_active.data_ptr<int64_t>(),
                                     at::cuda::getCurrentCUDAStream());
  });
  return {color, opacity, depth, weights, trans_end, n_active};
}

std::tuple<at::Tensor, at::Tensor> composite_backward_cuda_op(
    const std::optional<at::Tensor>& grad_color, const std::optional<at::Tensor>& grad_opacity,
    const std::optional<at::Tensor>& grad_depth, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_starts, const at::Tensor& t_ends,
    const at::Tensor& offsets, const at::Tensor& weights, const at::Tensor& trans_end, const at::Tensor& n_active,
    bool sigmas_grad, bool rgbs_grad) {
  check_composite_inputs(sigmas, rgbs, t_starts, t_ends, offsets);
  const int64_t n = offsets.size(0) - 1;
  const int64_t s = sigmas.size(0);
  check_composite_saved(weights, trans_end, n_active, sigmas, n);
  const at::Tensor* gc = optional_grad(grad_color, "grad_color", n, 3, sigmas);
  const at::Tensor* go = optional_grad(grad_opacity, "grad_opacity", n, 0, sigmas);
  const at::Tensor* gd = optional_grad(grad_depth, "grad_depth", n, 0, sigmas);
  const at::Tensor* gw = optional_grad(grad_weights, "grad_weights", s, 0, sigmas);
  const c10::cuda::CUDAGuard guard(sigmas.device());
  auto grad_sigmas = sigmas_grad ? at::zeros_like(sigmas) : at::empty({0}, sigmas.options());
  auto grad_rgbs = rgbs_grad ? at::zeros_like(rgbs) : at::empty({0}, rgbs.options());
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_backward_cuda", [&] {
    composite_backward_cuda<scalar_t>(
        offsets.data_ptr<int64_t>(), data_or_null<scalar_t>(gc), data_or_null<scalar_t>(go), data_or_null<scalar_t>(gd),
        data_or_null<scalar_t>(gw), rgbs.data_ptr<scalar_t>(), t_starts.data_ptr<scalar_t>(),
        t_ends.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), trans_end.data_ptr<scalar_t>(),
        n_active.data_ptr<int64_t>(), n, s, sigmas_grad ? grad_sigmas.data_ptr<scalar_t>() : nullptr,
        rgbs_grad ? grad_rgbs.data_ptr<scalar_t>() : nullptr, at::cuda::getCurrentCUDAStream());
  });
  return {grad_sigmas, grad_rgbs};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastminerf, CUDA, m) {
  m.impl("composite_forward", &composite_forward_cuda_op);
  m.impl("composite_backward", &composite_backward_cuda_op);
}

}  // namespace fastminerf
