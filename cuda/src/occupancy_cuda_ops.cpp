// CUDA implementations of the occupancy ops (registered for the CUDA dispatch key; the schemas are declared in
// occupancy_cpu.cpp). Built only when the extension is compiled with CUDA.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <limits>

#include "occupancy_cuda.h"
#include "occupancy_ops.h"

namespace fastminerf {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> march_rays_cuda_op(
    const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& near, const at::Tensor& far,
    const at::Tensor& bitfield, at::ArrayRef<double> aabbs, at::IntArrayRef resolution, double step_size,
    double cone_angle, double max_step_size, int64_t max_samples) {
  const occupancy::GridSpec g = make_occupancy_grid(aabbs, resolution);
  const occupancy::MarchParams mp = make_march_params(step_size, cone_angle, max_step_size, max_samples);
  check_march_inputs(origins, directions, near, far, bitfield, g);
  const c10::cuda::CUDAGuard guard(origins.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = origins.size(0);
  auto counts = at::empty({n}, origins.options().dtype(at::kLong));
  march_rays_count_cuda(origins.data_ptr<float>(), directions.data_ptr<float>(), near.data_ptr<float>(),
                        far.data_ptr<float>(), bitfield.data_ptr<uint8_t>(), n, g, mp, counts.data_ptr<int64_t>(),
                        stream);
  auto offsets = at::zeros({n + 1}, counts.options());
  if (n > 0) offsets.slice(0, 1).copy_(at::cumsum(counts, 0));
  const int64_t total = offsets[n].item<int64_t>();  // one sync: the output size
  auto ray_indices = at::empty({total}, counts.options());
  auto t_starts = at::empty({total}, origins.options());
  auto t_ends = at::empty({total}, origins.options());
  if (total > 0) {
    march_rays_write_cuda(origins.data_ptr<float>(), directions.data_ptr<float>(), near.data_ptr<float>(),
                          far.data_ptr<float>(), bitfield.data_ptr<uint8_t>(), n, g, mp, offsets.data_ptr<int64_t>(),
                          ray_indices.data_ptr<int64_t>(), t_starts.data_ptr<float>(), t_ends.data_ptr<float>(),
                          stream);
  }
  return {ray_indices, t_starts, t_ends, offsets};
}

at::Tensor occupancy_ema_cuda_op(const at::Tensor& occs, const at::Tensor& indices, const at::Tensor& values,
                                 double decay) {
  check_ema_inputs(occs, indices, values);
  const c10::cuda::CUDAGuard guard(occs.device());
  const int64_t n_cells = occs.size(0), m = indices.size(0);
  if (m > 0) {
    const auto [lo, hi] = at::aminmax(indices);
    const at::Tensor ends = at::stack({lo, hi}).to(at::kCPU);  // one read-back (a sync) for both ends
    const int64_t* e = ends.data_ptr<int64_t>();
    TORCH_CHECK(e[0] >= 0 && e[1] < n_cells,
                "fastminerf: occupancy update index out of range [0, ", n_cells, ")");
  }
  auto new_max = at::full({n_cells}, -std::numeric_limits<float>::infinity(), occs.options());
  auto visited = at::zeros({n_cells}, occs.options().dtype(at::kByte));
  auto out = at::empty_like(occs);
  occupancy_ema_cuda(occs.data_ptr<float>(), indices.data_ptr<int64_t>(), values.data_ptr<float>(), n_cells, m,
                     static_cast<float>(decay), new_max.data_ptr<float>(), visited.data_ptr<uint8_t>(),
                     out.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  return out;
}

at::Tensor occupancy_bitfield_cuda_op(const at::Tensor& occs, double threshold, int64_t levels) {
  check_pack_inputs(occs, levels);
  const c10::cuda::CUDAGuard guard(occs.device());
  const int64_t cells = occs.size(0) / levels;
  auto out = at::empty({levels, (cells + 7) / 8}, occs.options().dtype(at::kByte));
  occupancy_bitfield_cuda(occs.data_ptr<float>(), levels, cells, static_cast<float>(threshold),
                          out.data_ptr<uint8_t>(), at::cuda::getCurrentCUDAStream());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastminerf, CUDA, m) {
  m.impl("march_rays", &march_rays_cuda_op);
  m.impl("occupancy_ema", &occupancy_ema_cuda_op);
  m.impl("occupancy_bitfield", &occupancy_bitfield_cuda_op);
}

}  // namespace fastminerf
