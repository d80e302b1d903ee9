// Multi-cascade occupancy grid and the ray marcher that skips its empty cells, shared by the CPU and CUDA
// kernels (as nerfacc's OccGridEstimator / instant-ngp's density grid).
//
// Grid. `levels` cascades; cascade l covers the region-of-interest box scaled by 2^l about its centre (level 0
// is the finest). Every cascade has the same resolution (R0, R1, R2). A cell (i0, i1, i2) has the linear index
// (i0 * R1 + i1) * R2 + i2 (x-major, z fastest: nerfacc's `binaries[level, x, y, z]` flattened). The bitfield
// holds ceil(R0 R1 R2 / 8) bytes per level; bit b of byte k of level l is cell 8k + b of that level.
//
// Which cell a point belongs to (`locate`), in float32 with every operation rounded once:
//   p_a = (x_a - lo_{L-1,a}) * scale_{L-1,a}, scale = R_a / (hi - lo); outside the grid unless 0 <= p_a < R_a;
//   i_a = floor(p_a); while l > 0 and every i_a lies in [R_a/4, 3R_a/4) (the next finer cascade's region, which
//   is exactly those cells when R_a % 4 == 0): l -= 1, i_a = clamp(floor((x_a - lo_{l,a}) * scale_{l,a}), 0, R_a-1).
// So each point gets the finest cascade containing it, the outer box is half-open [lo, hi), and, because every
// step is monotone along a ray, the samples of a ray that fall in one cell are consecutive (used below).
//
// Sample lattice of a ray (o, d) with near plane n (float32, each operation rounded once):
//   fixed step (cone_angle = 0): t_k = n + k * step;
//   cone (cone_angle > 0):       t_0 = n, t_{k+1} = t_k + clamp(t_k * cone_angle, step, max_step);
//   sample k is [t_k, t_{k+1}], its midpoint m_k = (t_k + t_{k+1}) * 0.5 and its point x_k = o + m_k d.
// Sample k is emitted when t_{k+1} > t_k, m_k < far and locate(x_k) is an occupied cell (as nerfacc: the
// midpoint decides, the lattice starts at the near plane, t_{k+1} may pass `far`). At most `max_samples`
// (the first ones) per ray when max_samples > 0. The cone walk is a recurrence: it ends at its first sample of
// zero width (t_{k+1} == t_k, where float32 can no longer advance t).
//
// The walk evaluates only a few samples per empty cell: from a sample in an empty cell it jumps to the first
// sample past the cell's exit, after checking that the sample just before the jump target lies in the same
// cell (so every skipped sample does too, and the result is exactly that of testing every sample).
#pragma once

#include <cmath>
#include <cstdint>

#include "fastminerf/common.h"

namespace fastminerf {
namespace occupancy {

constexpr int kMaxLevels = 16;
// The marcher first clips the ray to the outer box grown by this fraction of its largest coordinate (plus the
// origin's), far more than float32 rounding of o + t d, so no sample inside the box is cut off by the clipping.
constexpr float kBoxPad = 1e-4f;

struct GridSpec {
  int levels;
  int res[3];
  int64_t cells_per_level;
  int64_t bytes_per_level;
  float lo[kMaxLevels][3];
  float hi[kMaxLevels][3];
  float scale[kMaxLevels][3];  // R_a / (hi - lo), rounded to float32 once
  float cell[kMaxLevels][3];   // (hi - lo) / R_a: cell size, only used to guess where a cell ends
};

struct MarchParams {
  float step_size;      // > 0
  float cone_angle;     // >= 0; 0 = fixed step
  float max_step_size;  // upper clamp of the cone step
  int64_t max_samples;  // <= 0: no cap
};

// ---------------------------------------------------------------------------------------------------------
// float32 arithmetic rounded once per operation on both sides (nvcc would otherwise fuse a*b+c into an fma).

FMN_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return static_cast<float>(static_cast<double>(a) * static_cast<double>(b));  // exact product, one rounding
#endif
}
FMN_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
FMN_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// ---------------------------------------------------------------------------------------------------------
// Cells and bits

FMN_HD int64_t cell_index(const GridSpec& g, int i0, int i1, int i2) {
  return (static_cast<int64_t>(i0) * g.res[1] + i1) * g.res[2] + i2;
}

FMN_HD bool bit_is_set(const uint8_t* bits, const GridSpec& g, int level, int64_t cell) {
  return (bits[level * g.bytes_per_level + (cell >> 3)] >> (cell & 7)) & 1;
}

struct Cell {
  int level;      // < 0: outside the outermost cascade
  int i[3];       // integer coordinates within the level
  int64_t index;  // linear index within the level
};

FMN_HD bool same_cell(Cell a, Cell b) { return a.level == b.level && a.index == b.index; }

FMN_HD float grid_coordinate(const GridSpec& g, int level, int axis, float x) {
  return mul_rn(sub_rn(x, g.lo[level][axis]), g.scale[level][axis]);
}

FMN_HD Cell locate(const GridSpec& g, const float x[3]) {
  int l = g.levels - 1;
  int i[3];
  for (int a = 0; a < 3; ++a) {
    const float p = grid_coordinate(g, l, a, x[a]);
    if (!(p >= 0.0f && p < static_cast<float>(g.res[a]))) return Cell{-1, {0, 0, 0}, 0};  // also rejects NaN
    i[a] = static_cast<int>(p);  // p >= 0: truncation is floor
  }
  while (l > 0) {
    bool inner = true;
    for (int a = 0; a < 3; ++a) inner = inner && 4 * i[a] >= g.res[a] && 4 * i[a] < 3 * g.res[a];
    if (!inner) break;
    --l;
    for (int a = 0; a < 3; ++a) {
      const float f = fmn_floor(grid_coordinate(g, l, a, x[a]));
      i[a] = static_cast<int>(fmn_clamp(f, 0.0f, static_cast<float>(g.res[a] - 1)));
    }
  }
  return Cell{l, {i[0], i[1], i[2]}, cell_index(g, i[0], i[1], i[2])};
}

// ---------------------------------------------------------------------------------------------------------
// Sample lattice

struct Sample {
  int64_t k;
  float t0, t1;  // [t_k, t_{k+1}]
};

struct Lattice {
  float near, step, cone, max_step;

  FMN_HD bool fixed() const { return cone == 0.0f; }
  FMN_HD float start(int64_t k) const { return add_rn(near, mul_rn(static_cast<float>(k), step)); }
  FMN_HD float dt(float t) const { return fmn_min(fmn_max(mul_rn(t, cone), step), max_step); }
  // Fixed step only: sample k in closed form.
  FMN_HD Sample at(int64_t k) const { return Sample{k, start(k), start(k + 1)}; }
  FMN_HD Sample first() const { return fixed() ? at(0) : Sample{0, near, add_rn(near, dt(near))}; }
  FMN_HD Sample next(const Sample& s) const {
    return Sample{s.k + 1, s.t1, fixed() ? start(s.k + 2) : add_rn(s.t1, dt(s.t1))};  // t1 is start(k+1)
  }
};

FMN_HD float midpoint(const Sample& s) { return mul_rn(add_rn(s.t0, s.t1), 0.5f); }

FMN_HD Cell locate_sample(const GridSpec& g, const float o[3], const float d[3], const Sample& s) {
  const float m = midpoint(s);
  const float x[3] = {add_rn(o[0], mul_rn(m, d[0])), add_rn(o[1], mul_rn(m, d[1])), add_rn(o[2], mul_rn(m, d[2]))};
  return locate(g, x);
}

// ---------------------------------------------------------------------------------------------------------
// Geometry used only to decide where to look (never what is emitted)

// Slab test against the outermost box grown by kBoxPad: [t_in, t_out], false when the ray misses it.
FMN_HD bool padded_box_range(const GridSpec& g, const float o[3], const float d[3], float& t_in, float& t_out) {
  const int L = g.levels - 1;
  float extent = 0.0f;
  for (int a = 0; a < 3; ++a) {
    extent = fmn_max(extent, fmn_max(fabsf(g.lo[L][a]), fabsf(g.hi[L][a])));
    extent = fmn_max(extent, fabsf(o[a]));
  }
  const float pad = kBoxPad * extent + 1e-30f;
  t_in = -INFINITY;
  t_out = INFINITY;
  for (int a = 0; a < 3; ++a) {
    const float lo = g.lo[L][a] - pad, hi = g.hi[L][a] + pad;
    if (d[a] == 0.0f) {
      if (!(o[a] >= lo && o[a] <= hi)) return false;
      continue;
    }
    const float inv = 1.0f / d[a];
    float ta = (lo - o[a]) * inv, tb = (hi - o[a]) * inv;
    if (ta > tb) {
      const float tmp = ta;
      ta = tb;
      tb = tmp;
    }
    t_in = fmn_max(t_in, ta);
    t_out = fmn_min(t_out, tb);
  }
  return t_in <= t_out;  // false for NaN as well
}

// Ray parameter where the ray leaves cell c (approximate: the walk verifies before it trusts it). inv_d = 1 / d
// (infinite for a zero component, whose axis is then never the exit).
FMN_HD float cell_exit(const GridSpec& g, Cell c, const float o[3], const float d[3], const float inv_d[3]) {
  float t = INFINITY;
  for (int a = 0; a < 3; ++a) {
    if (d[a] == 0.0f) continue;
    const float face = g.lo[c.level][a] + g.cell[c.level][a] * static_cast<float>(c.i[a] + (d[a] > 0.0f ? 1 : 0));
    t = fmn_min(t, (face - o[a]) * inv_d[a]);
  }
  return t;
}

// From sample s, which lies in the empty cell c, the next sample that needs looking at: the first one past the
// cell's exit when the sample before it is verified to lie in c (then, the samples of a cell being consecutive,
// all skipped samples lie in c), else the one before that when verified, else simply the next sample.
FMN_HD Sample skip_empty_cell(const GridSpec& g, const Lattice& lat, const float o[3], const float d[3],
                              const float inv_d[3], const Sample& s, Cell c, float t_limit) {
  const float t_exit = fmn_min(cell_exit(g, c, o, d, inv_d), t_limit);
  if (lat.fixed()) {
    // First k with m_k >= t_exit, give or take rounding (k < 2^24 here: t_limit is finite and near the box).
    const float kk = ceilf((t_exit - lat.near) / lat.step - 0.5f);
    int64_t kb = kk > static_cast<float>(s.k + 1) ? static_cast<int64_t>(fmn_min(kk, 1.0e18f)) : s.k + 1;
    for (int tries = 0; tries < 2 && kb - 1 > s.k; ++tries, --kb) {
      if (same_cell(locate_sample(g, o, d, lat.at(kb - 1)), c)) return lat.at(kb);
    }
    return lat.at(s.k + 1);
  }
  const Sample first = lat.next(s);
  Sample before2 = s, before1 = s, cur = first;
  while (cur.t1 > cur.t0 && midpoint(cur) < t_exit) {
    before2 = before1;
    before1 = cur;
    cur = lat.next(cur);
  }
  if (before1.k > s.k && same_cell(locate_sample(g, o, d, before1), c)) return cur;
  if (before2.k > s.k && same_cell(locate_sample(g, o, d, before2), c)) return before1;
  return first;
}

// ---------------------------------------------------------------------------------------------------------
// The walk of one ray. Calls emit(j, t0, t1) for its j-th emitted sample and returns how many it emitted.
// The count pass passes an emitter that does nothing; the write pass one that stores at offsets[ray] + j.

template <typename Emit>
FMN_HD int64_t march_ray(const GridSpec& g, const MarchParams& mp, const uint8_t* bits, const float o[3],
                         const float d[3], float near, float far, Emit&& emit) {
  if (!(near <= far)) return 0;
  if (d[0] == 0.0f && d[1] == 0.0f && d[2] == 0.0f) return 0;  // no direction: no samples
  // Non-finite values: no samples either (an infinite near plane puts every t_k at itself, zero-width; a non-finite
  // origin or direction component makes every x_k non-finite, outside the grid). Without this the walk would never
  // end: it cannot advance from near = -inf, and an infinite origin makes the box padding infinite.
  if (!(fabsf(near) < INFINITY)) return 0;
  for (int a = 0; a < 3; ++a) {
    if (!(fabsf(o[a]) < INFINITY && fabsf(d[a]) < INFINITY)) return 0;
  }
  float t_in, t_out;
  if (!padded_box_range(g, o, d, t_in, t_out)) return 0;
  const float t_limit = fmn_min(far, t_out);
  const Lattice lat{near, mp.step_size, mp.cone_angle, mp.max_step_size};
  const float inv_d[3] = {1.0f / d[0], 1.0f / d[1], 1.0f / d[2]};

  // Start just before the padded box: every earlier sample lies outside the grid.
  Sample s;
  if (lat.fixed()) {
    const double k0 = floor((static_cast<double>(t_in) - near) / lat.step - 0.5) - 1.0;
    s = lat.at(k0 > 0.0 ? static_cast<int64_t>(fmn_min(k0, 4.0e18)) : 0);
  } else {
    s = lat.first();
    while (s.t1 > s.t0 && midpoint(s) < t_in) s = lat.next(s);
  }

  int64_t n = 0;
  while (true) {
    if (!(s.t1 > s.t0)) {
      if (!lat.fixed()) break;  // the cone recurrence cannot advance any more
      s = lat.next(s);          // fixed step: a zero-width sample is not emitted
      continue;
    }
    if (!(midpoint(s) < t_limit)) break;
    const Cell c = locate_sample(g, o, d, s);
    if (c.level >= 0 && bit_is_set(bits, g, c.level, c.index)) {
      emit(n, s.t0, s.t1);
      ++n;
      if (mp.max_samples > 0 && n >= mp.max_samples) break;
      s = lat.next(s);
    } else if (c.level >= 0) {
      s = skip_empty_cell(g, lat, o, d, inv_d, s, c, t_limit);
    } else {
      s = lat.next(s);  // outside the grid: only within the box padding, a few samples at most
    }
  }
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// EMA update and bitfield

// One cell of the update: cells visited this round (and not marked invisible by a negative value) become
// max(occ * decay, largest new value); the others keep their value.
FMN_HD float ema_cell(float occ, bool visited, float new_max, float decay) {
  if (!visited || occ < 0.0f) return occ;
  return fmn_max(mul_rn(occ, decay), new_max);
}

// Byte k of one level's bitfield from that level's occupancy values (cells >= n_cells are 0).
FMN_HD uint8_t pack_byte(const float* level_occs, int64_t n_cells, int64_t k, float threshold) {
  uint8_t byte = 0;
  for (int b = 0; b < 8; ++b) {
    const int64_t cell = 8 * k + b;
    if (cell < n_cells && level_occs[cell] > threshold) byte |= static_cast<uint8_t>(1u << b);
  }
  return byte;
}

}  // namespace occupancy
}  // namespace fastminerf
