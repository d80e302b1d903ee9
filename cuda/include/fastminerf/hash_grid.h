// Multiresolution hash encoding (instant-ngp, Mueller et al. 2022), shared by the CPU and CUDA kernels.
//
// The function is the one tiny-cuda-nn's `HashGrid` computes, so that its parameters load into ours:
//   level l has scale s_l = float(exp2(l * log2(b)) * N_min - 1) and resolution R_l = ceil(s_l) + 1;
//   a point x in [0,1]^3 maps to p = fma(s_l, x, 0.5); corners floor(p) + {0,1}^3; trilinear weights;
//   corner index = dense x + y R + z R^2 when R^3 fits in the level's table, else the coherent prime hash
//   x * 1 ^ y * 2654435761 ^ z * 805459861 (uint32 arithmetic), both taken modulo the level's table size T_l.
//   Tables are concatenated level by level: row offsets[l] .. offsets[l+1]-1, F features per row.
//   Identity levels (fastminerf's addition, l >= salted_from): the corner index is always hashed, with a per-point
//   salt (the identity id) as a fourth coordinate, x * 1 ^ y * 2654435761 ^ z * 805459861 ^ salt * 3674653429, so
//   that each identity's fine detail lands in its own (pseudo-random) rows of the shared table.
// The scales, resolutions and offsets are computed once on the host (fastminerf/ops/hash_grid.py) and
// passed in, so CPU, CUDA and the PyTorch reference all use bit-identical level parameters.
#pragma once

#include <cmath>

#include "fastminerf/common.h"

namespace fastminerf {
namespace hashgrid {

constexpr int kMaxLevels = 32;
constexpr uint32_t kPrime1 = 2654435761u;
constexpr uint32_t kPrime2 = 805459861u;
constexpr uint32_t kPrime3 = 3674653429u;  // the salt's (tiny-cuda-nn's fourth coherent prime)
// Largest resolution whose cube fits in uint32 (tiny-cuda-nn's MAX_BASES[3]).
constexpr uint32_t kMaxDenseResolution = 0x659u;

// Per-level constants, passed by value to CUDA kernels.
struct GridMeta {
  int n_levels;
  int n_features;
  uint32_t offsets[kMaxLevels + 1];  // first table row of each level; offsets[L] = rows in all
  uint32_t resolutions[kMaxLevels];  // R_l
  double scales[kMaxLevels];         // s_l (already rounded to float32 for float tables)
  int salted_from;                   // levels l >= salted_from hash the per-point salt too (n_levels: none)
};

FMN_HD uint32_t coherent_prime_hash(uint32_t x, uint32_t y, uint32_t z) {
  return x ^ (y * kPrime1) ^ (z * kPrime2);
}

// Row of corner (x, y, z) within a level of `size` rows and resolution `res`; a salted level always hashes,
// with the salt as a fourth coordinate.
FMN_HD uint32_t grid_index(uint32_t size, uint32_t res, uint32_t x, uint32_t y, uint32_t z, uint32_t salt = 0u,
                           bool salted = false) {
  uint32_t index;
  if (salted) {
    index = coherent_prime_hash(x, y, z) ^ (salt * kPrime3);
  } else if (res <= kMaxDenseResolution && res * res * res <= size) {
    index = x + y * res + z * res * res;
  } else {
    index = coherent_prime_hash(x, y, z);
  }
  // A hashed level's size is a power of two (2^log2_hashmap_size): a mask gives the same value as the modulo
  // without an integer division per corner (with FMN_HD forced inline, the CPU encoding's forward and backward
  // passes 1.25-1.3x faster at the cpu preset's sizes, one thread). Dense levels keep the modulo: a corner one
  // past the last cell can index beyond res^3, and tiny-cuda-nn wraps it the same way.
  return (size & (size - 1u)) == 0u ? (index & (size - 1u)) : index % size;
}

// Continuous grid position p = s * x + 0.5, rounded once as tiny-cuda-nn's fmaf does. On the host the
// product and sum are exact in double (24 + 24 bits), so one rounding to float equals fmaf without
// needing FMA hardware; the PyTorch reference uses the same trick.
FMN_HD float grid_position(float scale, float x) {
#if defined(__CUDA_ARCH__)
  return fmaf(scale, x, 0.5f);
#else
  return static_cast<float>(static_cast<double>(scale) * static_cast<double>(x) + 0.5);
#endif
}
// float64 (tests, gradient checks): rounded twice, product then sum, on every side; on the device explicitly, since
// nvcc would otherwise contract it into one fma and pick the other cell for points a rounding away from a border.
FMN_HD double grid_position(double scale, double x) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(__dmul_rn(scale, x), 0.5);
#else
  return scale * x + 0.5;
#endif
}

// The 8 corners of the cell holding point x at one level: their table rows (relative to the level) and
// trilinear weights. `frac` receives the position inside the cell (needed for input gradients).
template <typename T>
FMN_HD void level_corners(const T* x, T scale, uint32_t res, uint32_t size, uint32_t rows[8], T weights[8],
                          T frac[3], uint32_t salt = 0u, bool salted = false) {
  uint32_t base[3];
  for (int d = 0; d < 3; ++d) {
    const T p = grid_position(scale, x[d]);
    const T fl = fmn_floor(p);
    // Through int64: the wrap to 32 bits the reference's `floor().long() & 0xFFFFFFFF` does, defined for points
    // far outside [0, 1] too (a cast of such a float to int is undefined on the host and saturates on the device).
    base[d] = static_cast<uint32_t>(static_cast<int64_t>(fl));
    frac[d] = p - fl;
  }
  for (int c = 0; c < 8; ++c) {
    T w = T(1);
    uint32_t q[3];
    for (int d = 0; d < 3; ++d) {
      const bool up = (c >> d) & 1;
      w *= up ? frac[d] : T(1) - frac[d];
      q[d] = base[d] + (up ? 1u : 0u);
    }
    rows[c] = grid_index(size, res, q[0], q[1], q[2], salt, salted);
    weights[c] = w;
  }
}

// Derivative of corner c's trilinear weight with respect to frac[d].
template <typename T>
FMN_HD T weight_derivative(int c, int d, const T frac[3]) {
  T w = ((c >> d) & 1) ? T(1) : T(-1);
  for (int e = 0; e < 3; ++e) {
    if (e == d) continue;
    w *= ((c >> e) & 1) ? frac[e] : T(1) - frac[e];
  }
  return w;
}

// Features per level are a compile-time F in {1, 2, 4, 8}, as in tiny-cuda-nn.
// Interpolation of one level's features from its corners: out[f] = sum_c w_c * table[row_c, f].
template <typename T, int F>
FMN_HD void interpolate_corners(const T* level_table, const uint32_t rows[8], const T weights[8], T* out) {
  T acc[F];
  for (int f = 0; f < F; ++f) acc[f] = T(0);
  for (int c = 0; c < 8; ++c) {
    const T* row = level_table + static_cast<size_t>(rows[c]) * F;
    for (int f = 0; f < F; ++f) acc[f] += weights[c] * row[f];
  }
  for (int f = 0; f < F; ++f) out[f] = acc[f];
}

// Forward for one point at one level.
template <typename T, int F>
FMN_HD void encode_point_level(const T* x, const T* level_table, uint32_t size, uint32_t res, T scale, T* out,
                               uint32_t salt = 0u, bool salted = false) {
  uint32_t rows[8];
  T weights[8];
  T frac[3];
  level_corners(x, scale, res, size, rows, weights, frac, salt, salted);
  interpolate_corners<T, F>(level_table, rows, weights, out);
}

// Scatter of one point's level gradient g (F values) to its corners: grad[row_c, f] += w_c * g[f].
template <typename T, int F, typename AddFn>
FMN_HD void scatter_corners(T* level_grad_table, const uint32_t rows[8], const T weights[8], const T* g, AddFn add) {
  for (int c = 0; c < 8; ++c) {
    T* row = level_grad_table + static_cast<size_t>(rows[c]) * F;
    for (int f = 0; f < F; ++f) add(row + f, weights[c] * g[f]);
  }
}

// dL/dx of one point at one level from its corners: grad_x[d] += scale * sum_c (dw_c / dfrac_d) <g, table[row_c]>.
// Each corner's dot product is formed once; the weight derivatives factor per axis (trilinear weights).
template <typename T, int F>
FMN_HD void point_gradient(const T* level_table, const uint32_t rows[8], const T frac[3], const T* g, T scale,
                           T* grad_x) {
  T dot[8];
  for (int c = 0; c < 8; ++c) {
    const T* row = level_table + static_cast<size_t>(rows[c]) * F;
    T acc = T(0);
    for (int f = 0; f < F; ++f) acc += g[f] * row[f];
    dot[c] = acc;
  }
  for (int d = 0; d < 3; ++d) {
    T acc = T(0);
    for (int c = 0; c < 8; ++c) acc += weight_derivative(c, d, frac) * dot[c];
    grad_x[d] += acc * scale;
  }
}

// Backward for one point at one level. Adds w_c * g into the table gradient through `add` (an atomic add
// where several threads may hit one row) and, when grad_x is not null, accumulates dL/dx into grad_x[0..2].
template <typename T, int F, typename AddFn>
FMN_HD void encode_point_level_backward(const T* x, const T* level_table, T* level_grad_table, const T* g,
                                        uint32_t size, uint32_t res, T scale, T* grad_x, AddFn add,
                                        uint32_t salt = 0u, bool salted = false) {
  uint32_t rows[8];
  T weights[8];
  T frac[3];
  level_corners(x, scale, res, size, rows, weights, frac, salt, salted);
  if (level_grad_table != nullptr) scatter_corners<T, F>(level_grad_table, rows, weights, g, add);
  if (grad_x != nullptr) point_gradient<T, F>(level_table, rows, frac, g, scale, grad_x);
}

}  // namespace hashgrid
}  // namespace fastminerf
