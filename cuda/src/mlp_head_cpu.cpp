// The fused MLP head (cuda/include/fastminerf/mlp_head.h): op schemas and the CPU implementation.
//
// Why fused: the heads are small (P = 8..32 inputs, H = 64 hidden, O = 3..19 outputs) and run on ~30k samples a
// step. As separate torch ops every layer streams an (S, H) activation through memory several times (linear,
// gather of the per-ray rows, add, relu, and their backwards: about 37 ms a step on one core). Here 32 samples at
// a time go through the whole head with their activations in L1, as small register-tiled matrix products.
//
// Weight gradients without atomics and independent of the thread count: samples are cut into groups of about
// kGroup samples whose borders fall between rays (when ray indices are non-decreasing, as packed samples are;
// otherwise one group takes them all), each group sums into its own slice of partial weight gradients and owns
// its rays' rows of grad_pre, and the slices are added in group order at the end. The result is bit-identical
// for any number of threads.
//
// Float32 on x86-64 runs an AVX2+FMA build of the blocked loops, chosen at run time; other types and CPUs run
// the same code built for the baseline target. H not a multiple of 8 takes the per-sample loop of the header.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "fastminerf/mlp_head.h"
#include "mlp_head_checks.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors by value in always-inlined helpers only

#if defined(__x86_64__) && defined(__GNUC__)
#define FMN_X86_CLONES 1
#define FMN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FMN_ALWAYS_INLINE inline
#endif

namespace fastminerf {
namespace {

constexpr int kBlock = 32;        // samples a block: their hidden rows (32 x H) stay in L1
constexpr int64_t kGroup = 2048;  // samples a group of weight-gradient partial sums (moved up to a ray border)

inline int64_t round8(int64_t v) { return (v + 7) / 8 * 8; }

// 32-byte vectors through the compilers' vector extensions (GCC, Clang): AVX registers in the AVX2 build, pairs
// of SSE registers in the baseline build. Autovectorisation of these loops was tried and came out 3x slower than
// torch (it vectorised across k with shuffles and spilled the accumulators).
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int kLanes = 32 / sizeof(T);
};

template <typename T>
FMN_ALWAYS_INLINE typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
FMN_ALWAYS_INLINE void vstore(T* p, typename Vec<T>::type v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// C (MR x NV vectors, row stride ldc) += A (MR x K; element (i, k) at a[i * ars + k * acs]) * B (K x NV vectors,
// row stride ldb): MR x NV accumulators in registers, one broadcast of A per row and NV loads of B per k.
template <typename T, int MR, int NV>
FMN_ALWAYS_INLINE void tile(int K, const T* a, int64_t ars, int64_t acs, const T* b, int64_t ldb, T* c, int64_t ldc) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::kLanes;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vload(c + r * ldc + v * W);
  for (int k = 0; k < K; ++k) {
    V bk[NV];
    for (int v = 0; v < NV; ++v) bk[v] = vload(b + k * ldb + v * W);
    for (int r = 0; r < MR; ++r) {
      const T av = a[r * ars + k * acs];
      for (int v = 0; v < NV; ++v) acc[r][v] += bk[v] * av;
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) vstore(c + r * ldc + v * W, acc[r][v]);
}

// C (M x NC) += A (M x K) * B (K x NC), NC a multiple of 8 (of the vector width).
template <typename T>
FMN_ALWAYS_INLINE void gemm_acc(int M, int NC, int K, const T* a, int64_t ars, int64_t acs, const T* b, int64_t ldb,
                                T* c, int64_t ldc) {
  constexpr int W = Vec<T>::kLanes;
  int i = 0;
  for (; i + 4 <= M; i += 4) {
    int j = 0;
    for (; j + 2 * W <= NC; j += 2 * W) tile<T, 4, 2>(K, a + i * ars, ars, acs, b + j, ldb, c + i * ldc + j, ldc);
    for (; j < NC; j += W) tile<T, 4, 1>(K, a + i * ars, ars, acs, b + j, ldb, c + i * ldc + j, ldc);
  }
  for (; i < M; ++i) {
    int j = 0;
    for (; j + 2 * W <= NC; j += 2 * W) tile<T, 1, 2>(K, a + i * ars, ars, acs, b + j, ldb, c + i * ldc + j, ldc);
    for (; j < NC; j += W) tile<T, 1, 1>(K, a + i * ars, ars, acs, b + j, ldb, c + i * ldc + j, ldc);
  }
}

// Everything one call needs: sizes, inputs and the weights re-laid out for row-contiguous B operands.
template <typename T>
struct Head {
  int P, H, O, Pp, Op;    // Pp, Op: P and O rounded up to 8
  const T* x;             // (S, P)
  const T* pre;           // (N, H)
  const int64_t* ri;      // (S,) or null: row s of pre
  const T* w1;            // (H, P)
  const T* w2;            // (O, H)
  const T* b2;            // (O,)
  std::vector<T> w1t;     // (P, H)   = W1^T
  std::vector<T> w1p;     // (H, Pp)  = W1 zero-padded
  std::vector<T> w2t;     // (H, Op)  = W2^T zero-padded
  std::vector<T> b2p;     // (Op,)
  int64_t row(int64_t s) const { return ri != nullptr ? ri[s] : s; }
};

template <typename T>
void prepare_weights(Head<T>& hd) {
  const int P = hd.P, H = hd.H, O = hd.O;
  hd.w1t.assign(size_t(P) * H, T(0));
  hd.w1p.assign(size_t(H) * hd.Pp, T(0));
  hd.w2t.assign(size_t(H) * hd.Op, T(0));
  hd.b2p.assign(hd.Op, T(0));
  for (int j = 0; j < H; ++j)
    for (int p = 0; p < P; ++p) {
      hd.w1t[size_t(p) * H + j] = hd.w1[j * P + p];
      hd.w1p[size_t(j) * hd.Pp + p] = hd.w1[j * P + p];
    }
  for (int o = 0; o < O; ++o) {
    hd.b2p[o] = hd.b2[o];
    for (int j = 0; j < H; ++j) hd.w2t[size_t(j) * hd.Op + o] = hd.w2[o * H + j];
  }
}

// hb (nb, H) = relu(x W1^T + pre[ray]) of the nb samples from b.
template <typename T>
FMN_ALWAYS_INLINE void hidden_block(const Head<T>& hd, int64_t b, int nb, T* hb) {
  const int H = hd.H;
  for (int r = 0; r < nb; ++r) {
    const T* pr = hd.pre + hd.row(b + r) * H;
    std::copy(pr, pr + H, hb + r * H);
  }
  gemm_acc<T>(nb, H, hd.P, hd.x + b * hd.P, hd.P, 1, hd.w1t.data(), H, hb, H);
  for (int k = 0; k < nb * H; ++k) hb[k] = mlphead::relu(hb[k]);
}

// A block's buffer of kBlock rows of `width` values: `small` (kBlock * kSmallWidth on the stack) when it fits,
// else `big` resized on the heap.
constexpr int kSmallWidth = 32;
template <typename T>
T* block_buffer(T* small, std::vector<T>& big, int width) {
  if (width <= kSmallWidth) return small;
  big.resize(size_t(kBlock) * width);
  return big.data();
}

// Forward of samples [s0, s1) in blocks: y (S, O).
template <typename T>
FMN_ALWAYS_INLINE void forward_range(const Head<T>& hd, int64_t s0, int64_t s1, T* y) {
  const int H = hd.H, O = hd.O, Op = hd.Op;
  alignas(64) T hb[kBlock * mlphead::kMaxHidden];
  alignas(64) T ybuf[kBlock * kSmallWidth];
  std::vector<T> ybig;
  T* yb = block_buffer(ybuf, ybig, Op);
  for (int64_t b = s0; b < s1; b += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, s1 - b));
    hidden_block(hd, b, nb, hb);
    for (int r = 0; r < nb; ++r) std::copy(hd.b2p.begin(), hd.b2p.end(), yb + r * Op);
    gemm_acc<T>(nb, Op, H, hb, H, 1, hd.w2t.data(), Op, yb, Op);
    for (int r = 0; r < nb; ++r) std::copy(yb + r * Op, yb + r * Op + O, y + (b + r) * O);
  }
}

// Backward of the samples [s0, s1) of one group: grad_pre rows of its rays, grad_x rows (when not null) and the
// group's partial weight gradients dw1t (P, H), dw2 (O, H), db2 (O,), zero on entry. The hidden rows are
// recomputed (cheaper than storing an (S, H) activation: fresh memory that size costs page faults every step).
template <typename T>
FMN_ALWAYS_INLINE void backward_range(const Head<T>& hd, int64_t s0, int64_t s1, const T* dy, T* grad_pre,
                                      T* grad_x, T* dw1t, T* dw2, T* db2) {
  const int H = hd.H, O = hd.O, P = hd.P, Pp = hd.Pp;
  alignas(64) T hb[kBlock * mlphead::kMaxHidden];
  alignas(64) T dh[kBlock * mlphead::kMaxHidden];
  alignas(64) T dxbuf[kBlock * kSmallWidth];
  std::vector<T> dxbig;
  T* dxb = block_buffer(dxbuf, dxbig, Pp);
  for (int64_t b = s0; b < s1; b += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, s1 - b));
    hidden_block(hd, b, nb, hb);
    const T* g = dy + b * O;
    std::fill(dh, dh + nb * H, T(0));
    gemm_acc<T>(nb, H, O, g, O, 1, hd.w2, H, dh, H);
    for (int k = 0; k < nb * H; ++k) dh[k] = mlphead::masked(dh[k], hb[k]);
    gemm_acc<T>(O, H, nb, g, 1, O, hb, H, dw2, H);
    for (int r = 0; r < nb; ++r)
      for (int o = 0; o < O; ++o) db2[o] += g[r * O + o];
    gemm_acc<T>(P, H, nb, hd.x + b * P, 1, P, dh, H, dw1t, H);
    for (int r = 0; r < nb; ++r) {
      T* gp = grad_pre + hd.row(b + r) * H;
      const T* d = dh + r * H;
      for (int j = 0; j < H; ++j) gp[j] += d[j];
    }
    if (grad_x != nullptr) {
      std::fill(dxb, dxb + nb * Pp, T(0));
      gemm_acc<T>(nb, Pp, H, dh, H, 1, hd.w1p.data(), Pp, dxb, Pp);
      for (int r = 0; r < nb; ++r) std::copy(dxb + r * Pp, dxb + r * Pp + P, grad_x + (b + r) * P);
    }
  }
}

// The per-sample loops of the header: the path for H not a multiple of 8 (and the blocked path's reference).
template <typename T>
void forward_range_plain(const Head<T>& hd, int64_t s0, int64_t s1, T* y) {
  T h[mlphead::kMaxHidden];
  for (int64_t s = s0; s < s1; ++s) {
    mlphead::hidden(hd.x + s * hd.P, hd.pre + hd.row(s) * hd.H, hd.w1, hd.P, hd.H, h);
    mlphead::output(h, hd.w2, hd.b2, hd.H, hd.O, y + s * hd.O);
  }
}

template <typename T>
void backward_range_plain(const Head<T>& hd, int64_t s0, int64_t s1, const T* dy, T* grad_pre, T* grad_x, T* dw1t,
                          T* dw2, T* db2) {
  const int H = hd.H, O = hd.O, P = hd.P;
  T hs[mlphead::kMaxHidden];
  T dh[mlphead::kMaxHidden];
  for (int64_t s = s0; s < s1; ++s) {
    const T* g = dy + s * O;
    const T* xs = hd.x + s * P;
    mlphead::hidden(xs, hd.pre + hd.row(s) * H, hd.w1, P, H, hs);
    mlphead::backward(g, hs, hd.w1, hd.w2, P, H, O, dh, grad_x != nullptr ? grad_x + s * P : nullptr);
    T* gp = grad_pre + hd.row(s) * H;
    for (int j = 0; j < H; ++j) gp[j] += dh[j];
    for (int o = 0; o < O; ++o) {
      db2[o] += g[o];
      for (int j = 0; j < H; ++j) dw2[o * H + j] += g[o] * hs[j];
    }
    for (int p = 0; p < P; ++p)
      for (int j = 0; j < H; ++j) dw1t[p * H + j] += xs[p] * dh[j];
  }
}

template <typename T>
void forward_any(const Head<T>& hd, int64_t s0, int64_t s1, T* y) {
  if (hd.H % 8 != 0) return forward_range_plain(hd, s0, s1, y);
  forward_range(hd, s0, s1, y);
}

template <typename T>
void backward_any(const Head<T>& hd, int64_t s0, int64_t s1, const T* dy, T* grad_pre, T* grad_x,
                  T* dw1t, T* dw2, T* db2) {
  if (hd.H % 8 != 0) return backward_range_plain(hd, s0, s1, dy, grad_pre, grad_x, dw1t, dw2, db2);
  backward_range(hd, s0, s1, dy, grad_pre, grad_x, dw1t, dw2, db2);
}

#ifdef FMN_X86_CLONES
__attribute__((target("avx2,fma"))) void forward_avx2(const Head<float>& hd, int64_t s0, int64_t s1, float* y) {
  forward_range(hd, s0, s1, y);
}
__attribute__((target("avx2,fma"))) void backward_avx2(const Head<float>& hd, int64_t s0, int64_t s1, const float* dy,
                                                       float* grad_pre, float* grad_x,
                                                       float* dw1t, float* dw2, float* db2) {
  backward_range(hd, s0, s1, dy, grad_pre, grad_x, dw1t, dw2, db2);
}
bool use_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

template <typename T>
void forward_dispatch(const Head<T>& hd, int64_t s0, int64_t s1, T* y) {
#ifdef FMN_X86_CLONES
  if constexpr (std::is_same_v<T, float>) {
    if (hd.H % 8 == 0 && use_avx2()) return forward_avx2(hd, s0, s1, y);
  }
#endif
  forward_any(hd, s0, s1, y);
}

template <typename T>
void backward_dispatch(const Head<T>& hd, int64_t s0, int64_t s1, const T* dy, T* grad_pre,
                       T* grad_x, T* dw1t, T* dw2, T* db2) {
#ifdef FMN_X86_CLONES
  if constexpr (std::is_same_v<T, float>) {
    if (hd.H % 8 == 0 && use_avx2()) return backward_avx2(hd, s0, s1, dy, grad_pre, grad_x, dw1t, dw2, db2);
  }
#endif
  backward_any(hd, s0, s1, dy, grad_pre, grad_x, dw1t, dw2, db2);
}

template <typename T>
Head<T> make_head(const at::Tensor& x, const at::Tensor& pre, const at::Tensor* ray_indices, const at::Tensor& w1,
                  const at::Tensor& w2, const at::Tensor& b2) {
  Head<T> hd;
  hd.P = static_cast<int>(x.size(1));
  hd.H = static_cast<int>(w1.size(0));
  hd.O = static_cast<int>(w2.size(0));
  hd.Pp = static_cast<int>(round8(hd.P));
  hd.Op = static_cast<int>(round8(hd.O));
  hd.x = x.data_ptr<T>();
  hd.pre = pre.data_ptr<T>();
  hd.ri = ray_indices != nullptr ? ray_indices->data_ptr<int64_t>() : nullptr;
  hd.w1 = w1.data_ptr<T>();
  hd.w2 = w2.data_ptr<T>();
  hd.b2 = b2.data_ptr<T>();
  prepare_weights(hd);
  return hd;
}

at::Tensor mlp_head_forward_cpu(const at::Tensor& x, const at::Tensor& pre, const std::optional<at::Tensor>& ray_indices,
                                const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& b2) {
  const at::Tensor* ri = check_mlp_head_inputs(x, pre, ray_indices, w1, w2, b2);
  check_ray_indices_host(ri, pre.size(0));
  const int64_t S = x.size(0);
  auto y = at::empty({S, w2.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_head_forward_cpu", [&] {
    const auto hd = make_head<scalar_t>(x, pre, ri, w1, w2, b2);
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, (S + kBlock - 1) / kBlock, 16, [&](int64_t b0, int64_t b1) {
      forward_dispatch(hd, b0 * kBlock, std::min(S, b1 * kBlock), yp);
    });
  });
  return y;
}

// Group borders: about kGroup samples each, moved forward to the next ray border; one group when the ray
// indices are not sorted (a ray's samples could then fall in several groups).
std::vector<int64_t> group_borders(const int64_t* ri, int64_t S, bool sorted) {
  if (!sorted) return {0, S};
  std::vector<int64_t> borders{0};
  while (borders.back() < S) {
    int64_t e = std::min(S, borders.back() + kGroup);
    if (ri != nullptr)
      while (e < S && ri[e] == ri[e - 1]) ++e;
    borders.push_back(e);
  }
  return borders;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_head_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& pre, const std::optional<at::Tensor>& ray_indices,
    const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& b2, bool x_grad) {
  const at::Tensor* ri = check_mlp_head_inputs(x, pre, ray_indices, w1, w2, b2);
  check_mlp_head_grad(grad_y, x, w2);
  const bool sorted = check_ray_indices_host(ri, pre.size(0));
  const int64_t S = x.size(0);
  const int64_t P = x.size(1), H = w1.size(0), O = w2.size(0);
  auto grad_pre = at::zeros_like(pre);
  auto grad_x = x_grad ? at::empty_like(x) : at::empty({0}, x.options());
  auto grad_w1 = at::zeros_like(w1);
  auto grad_w2 = at::zeros_like(w2);
  auto grad_b2 = at::zeros_like(b2);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_head_backward_cpu", [&] {
    const auto hd = make_head<scalar_t>(x, pre, ri, w1, w2, b2);
    const auto borders = group_borders(hd.ri, S, sorted);
    const int64_t n_groups = static_cast<int64_t>(borders.size()) - 1;
    const int64_t part = P * H + O * H + O;  // one group's partial sums: dw1t, dw2, db2
    std::vector<scalar_t> parts(static_cast<size_t>(n_groups * part), scalar_t(0));
    const scalar_t* dy = grad_y.data_ptr<scalar_t>();
    scalar_t* gp = grad_pre.data_ptr<scalar_t>();
    scalar_t* gx = x_grad ? grad_x.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n_groups, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        scalar_t* pg = parts.data() + g * part;
        backward_dispatch(hd, borders[g], borders[g + 1], dy, gp, gx, pg, pg + P * H, pg + P * H + O * H);
      }
    });
    // Sum the groups' partials in group order, then write W1's gradient back in (H, P) layout.
    std::vector<scalar_t> total(static_cast<size_t>(part), scalar_t(0));
    for (int64_t g = 0; g < n_groups; ++g) {
      const scalar_t* pg = parts.data() + g * part;
      for (int64_t k = 0; k < part; ++k) total[k] += pg[k];
    }
    scalar_t* gw1 = grad_w1.data_ptr<scalar_t>();
    for (int64_t p = 0; p < P; ++p)
      for (int64_t j = 0; j < H; ++j) gw1[j * P + p] = total[p * H + j];
    std::copy(total.begin() + P * H, total.begin() + P * H + O * H, grad_w2.data_ptr<scalar_t>());
    std::copy(total.begin() + P * H + O * H, total.end(), grad_b2.data_ptr<scalar_t>());
  });
  return {grad_x, grad_pre, grad_w1, grad_w2, grad_b2};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastminerf, m) {
  m.def(
      "mlp_head_forward(Tensor x, Tensor pre, Tensor? ray_indices, Tensor w1, Tensor w2, Tensor b2) -> Tensor");
  m.def(
      "mlp_head_backward(Tensor grad_y, Tensor x, Tensor pre, Tensor? ray_indices, Tensor w1, Tensor w2, Tensor b2, "
      "bool x_grad) -> (Tensor grad_x, Tensor grad_pre, Tensor grad_w1, Tensor grad_w2, "
      "Tensor grad_b2)");
}

TORCH_LIBRARY_IMPL(fastminerf, CPU, m) {
  m.impl("mlp_head_forward", &mlp_head_forward_cpu);
  m.impl("mlp_head_backward", &mlp_head_backward_cpu);
}

}  // namespace fastminerf
