// CUDA implementations of the hash-grid ops (registered for the CUDA dispatch key; the schemas are declared
// in hash_grid_cpu.cpp). Built only when the extension is compiled with CUDA.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "hash_grid_cuda.h"
#include "op_utils.h"

namespace fastminerf {
namespace {

at::Tensor hash_encode_forward_cuda_op(const at::Tensor& points, const at::Tensor& table, at::IntArrayRef offsets,
                                       at::IntArrayRef resolutions, at::ArrayRef<double> scales,
                                       const at::Tensor& salt, int64_t salted_from) {
  const auto meta = make_grid_meta(offsets, resolutions, scales, table.size(1), salted_from);
  check_hash_inputs(points, table, meta);
  const int32_t* salt_ptr = check_salt(salt, points, meta);
  const c10::cuda::CUDAGuard guard(points.device());
  const int64_t n = points.size(0);
  auto out = at::empty({n, static_cast<int64_t>(meta.n_levels) * meta.n_features}, points.options());
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "hash_encode_forward_cuda", [&] {
    hash_encode_forward_cuda<scalar_t>(points.data_ptr<scalar_t>(), salt_ptr, table.data_ptr<scalar_t>(),
                                       out.data_ptr<scalar_t>(), n, meta, at::cuda::getCurrentCUDAStream());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hash_encode_backward_cuda_op(const at::Tensor& grad_out, const at::Tensor& points,
                                                                const at::Tensor& table, at::IntArrayRef offsets,
                                                                at::IntArrayRef resolutions,
                                                                at::ArrayRef<double> scales, const at::Tensor& salt,
                                                                int64_t salted_from, bool table_grad,
                                                                bool points_grad) {
  const auto meta = make_grid_meta(offsets, resolutions, scales, table.size(1), salted_from);
  check_hash_inputs(points, table, meta);
  const int32_t* salt_ptr = check_salt(salt, points, meta);
  check_hash_grad(grad_out, points, meta);
  const c10::cuda::CUDAGuard guard(points.device());
  auto grad_table = table_grad ? at::zeros_like(table) : at::empty({0}, table.options());
  auto grad_points = points_grad ? at::zeros_like(points) : at::empty({0}, points.options());
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "hash_encode_backward_cuda", [&] {
    hash_encode_backward_cuda<scalar_t>(grad_out.data_ptr<scalar_t>(), points.data_ptr<scalar_t>(), salt_ptr,
                                        table.data_ptr<scalar_t>(),
                                        table_grad ? grad_table.data_ptr<scalar_t>() : nullptr,
                                        points_grad ? grad_points.data_ptr<scalar_t>() : nullptr, points.size(0),
                                        meta, at::cuda::getCurrentCUDAStream());
  });
  return {grad_table, grad_points};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastminerf, CUDA, m) {
  m.impl("hash_encode_forward", &hash_encode_forward_cuda_op);
  m.impl("hash_encode_backward", &hash_encode_backward_cuda_op);
}

}  // namespace fastminerf
