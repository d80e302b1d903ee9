// The Python extension module `fastminerf._C`. Importing it runs the static TORCH_LIBRARY registrations of
// every op file linked into it; the ops are then reached as torch.ops.fastminerf.<name>.
#include <torch/extension.h>

#ifdef FASTMINERF_WITH_CUDA
static constexpr bool kWithCuda = true;
#else
static constexpr bool kWithCuda = false;
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("with_cuda") = kWithCuda;
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
}
