// Volume compositing on packed samples: op schemas and the OpenMP CPU implementation. The per-ray forward and
// backward are in cuda/include/fastminerf/composite.h and are shared with composite_cuda.cu.
//
// Work is split over rays with at::parallel_for (PyTorch's OpenMP pool); each ray is walked by one thread, so
// no two threads write the same output and no atomics are needed.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <optional>
#include <tuple>

#include "composite_checks.h"
#include "fastminerf/composite.h"

namespace fastminerf {
namespace {

constexpr int64_t kRayGrain = 512;  // rays per parallel chunk (about 16k samples at 32 a ray)

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_forward_cpu(
    const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_starts, const at::Tensor& t_ends,
    const at::Tensor& offsets, double threshold) {
  check_composite_inputs(sigmas, rgbs, t_starts, t_ends, offsets);
  check_offsets_values_host(offsets, sigmas.size(0));
  const int64_t n = offsets.size(0) - 1;
  auto color = at::empty({n, 3}, sigmas.options());
  auto opacity = at::empty({n}, sigmas.options());
  auto depth = at::empty({n}, sigmas.options());
  auto weights = at::zeros_like(sigmas);
  auto trans_end = at::empty({n}, sigmas.options());
  auto n_active = at::empty({n}, offsets.options());
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_forward_cpu", [&] {
    const int64_t* off = offsets.data_ptr<int64_t>();
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    const scalar_t* rgb = rgbs.data_ptr<scalar_t>();
    const scalar_t* t0 = t_starts.data_ptr<scalar_t>();
    const scalar_t* t1 = t_ends.data_ptr<scalar_t>();
    scalar_t* w = weights.data_ptr<scalar_t>();
    scalar_t* col = color.data_ptr<scalar_t>();
    scalar_t* op = opacity.data_ptr<scalar_t>();
    scalar_t* dep = depth.data_ptr<scalar_t>();
    scalar_t* te = trans_end.data_ptr<scalar_t>();
    int64_t* na = n_active.data_ptr<int64_t>();
    const scalar_t thr = static_cast<scalar_t>(threshold);
    at::parallel_for(0, n, kRayGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const auto out = composite::forward_ray<scalar_t>(off[r], off[r + 1], sg, rgb, t0, t1, thr, w);
        col[3 * r + 0] = out.color[0];
        col[3 * r + 1] = out.color[1];
        col[3 * r + 2] = out.color[2];
        op[r] = out.opacity;
        dep[r] = out.depth;
        te[r] = out.trans_end;
        na[r] = out.n_active;
      }
    });
  });
  return {color, opacity, depth, weights, trans_end, n_active};
}

std::tuple<at::Tensor, at::Tensor> composite_backward_cpu(
    const std::optional<at::Tensor>& grad_color, const std::optional<at::Tensor>& grad_opacity,
    const std::optional<at::Tensor>& grad_depth, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_starts, const at::Tensor& t_ends,
    const at::Tensor& offsets, const at::Tensor& weights, const at::Tensor& trans_end, const at::Tensor& n_active,
    bool sigmas_grad, bool rgbs_grad) {
  check_composite_inputs(sigmas, rgbs, t_starts, t_ends, offsets);
  check_offsets_values_host(offsets, sigmas.size(0));
  const int64_t n = offsets.size(0) - 1;
  check_composite_saved(weights, trans_end, n_active, sigmas, n);
  const at::Tensor* gc = optional_grad(grad_color, "grad_color", n, 3, sigmas);
  const at::Tensor* go = optional_grad(grad_opacity, "grad_opacity", n, 0, sigmas);
  const at::Tensor* gd = optional_grad(grad_depth, "grad_depth", n, 0, sigmas);
  const at::Tensor* gw = optional_grad(grad_weights, "grad_weights", sigmas.size(0), 0, sigmas);
  auto grad_sigmas = sigmas_grad ? at::zeros_like(sigmas) : at::empty({0}, sigmas.options());
  auto grad_rgbs = rgbs_grad ? at::zeros_like(rgbs) : at::empty({0}, rgbs.options());
  if (!sigmas_grad && !rgbs_grad) return {grad_sigmas, grad_rgbs};
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_backward_cpu", [&] {
    const int64_t* off = offsets.data_ptr<int64_t>();
    const int64_t* na = n_active.data_ptr<int64_t>();
    const scalar_t* te = trans_end.data_ptr<scalar_t>();
    const scalar_t* gcp = data_or_null<scalar_t>(gc);
    const scalar_t* gop = data_or_null<scalar_t>(go);
    const scalar_t* gdp = data_or_null<scalar_t>(gd);
    const scalar_t* gwp = data_or_null<scalar_t>(gw);
    const scalar_t* rgb = rgbs.data_ptr<scalar_t>();
    const scalar_t* t0 = t_starts.data_ptr<scalar_t>();
    const scalar_t* t1 = t_ends.data_ptr<scalar_t>();
    const scalar_t* w = weights.data_ptr<scalar_t>();
    scalar_t* gs = sigmas_grad ? grad_sigmas.data_ptr<scalar_t>() : nullptr;
    scalar_t* gr = rgbs_grad ? grad_rgbs.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, kRayGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t k = na[r];
        TORCH_CHECK(k >= 0 && k <= off[r + 1] - off[r], "fastminerf: saved `n_active` does not match `offsets`");
        composite::backward_ray<scalar_t>(off[r], k, te[r], gcp ? gcp + 3 * r : nullptr, gop ? gop + r : nullptr,
                                          gdp ? gdp + r : nullptr, gwp, rgb, t0, t1, w, gs, gr);
      }
    });
  });
  return {grad_sigmas, grad_rgbs};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastminerf, m) {
  m.def(
      "composite_forward(Tensor sigmas, Tensor rgbs, Tensor t_starts, Tensor t_ends, Tensor offsets, "
      "float threshold) -> (Tensor color, Tensor opacity, Tensor depth, Tensor weights, Tensor trans_end, "
      "Tensor n_active)");
  m.def(
      "composite_backward(Tensor? grad_color, Tensor? grad_opacity, Tensor? grad_depth, Tensor? grad_weights, "
      "Tensor sigmas, Tensor rgbs, Tensor t_starts, Tensor t_ends, Tensor offsets, Tensor weights, "
      "Tensor trans_end, Tensor n_active, bool sigmas_grad, bool rgbs_grad) -> (Tensor grad_sigmas, "
      "Tensor grad_rgbs)");
}

TORCH_LIBRARY_IMPL(fastminerf, CPU, m) {
  m.impl("composite_forward", &composite_forward_cpu);
  m.impl("composite_backward", &composite_backward_cpu);
}

}  // namespace fastminerf
