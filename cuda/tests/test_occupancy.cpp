// Tests of the shared occupancy-grid math (cuda/include/fastminerf/occupancy.h) on the host: cell lookup across
// cascades and borders, the lattice, the walk against testing every sample, EMA and bitfield packing.
#include "fastminerf/occupancy.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "check.h"

using namespace fastminerf::occupancy;

namespace {

// Cascades as cascade_aabbs: roi [-1, 1]^3 scaled by 2^l, resolution r per axis.
GridSpec make_grid(int levels, int r0, int r1, int r2) {
  GridSpec g{};
  g.levels = levels;
  g.res[0] = r0;
  g.res[1] = r1;
  g.res[2] = r2;
  g.cells_per_level = int64_t(r0) * r1 * r2;
  g.bytes_per_level = (g.cells_per_level + 7) / 8;
  for (int l = 0; l < levels; ++l) {
    for (int a = 0; a < 3; ++a) {
      g.lo[l][a] = -float(1 << l);
      g.hi[l][a] = float(1 << l);
      g.scale[l][a] = float(g.res[a]) / (g.hi[l][a] - g.lo[l][a]);
      g.cell[l][a] = (g.hi[l][a] - g.lo[l][a]) / float(g.res[a]);
    }
  }
  return g;
}

void set_bit(std::vector<uint8_t>& bits, const GridSpec& g, int level, int64_t cell) {
  bits[level * g.bytes_per_level + (cell >> 3)] |= uint8_t(1u << (cell & 7));
}

struct Collect {
  std::vector<float>* t0;
  std::vector<float>* t1;
  void operator()(int64_t, float a, float b) const {
    t0->push_back(a);
    t1->push_back(b);
  }
};

struct Nothing {
  void operator()(int64_t, float, float) const {}
};

// Every lattice sample tested, no skipping: the definition the walk must reproduce.
int64_t brute_force(const GridSpec& g, const MarchParams& mp, const uint8_t* bits, const float o[3], const float d[3],
                    float near, float far, std::vector<float>& t0, std::vector<float>& t1) {
  const Lattice lat{near, mp.step_size, mp.cone_angle, mp.max_step_size};
  // Past this distance from the origin no point lies in the outer box (unit direction, box centred at 0).
  const float outer = g.hi[g.levels - 1][0];
  const float reach = std::sqrt(o[0] * o[0] + o[1] * o[1] + o[2] * o[2]) + 1.8f * outer + 1.f;
  Sample s = lat.first();
  for (int k = 0; k < 1000000; ++k, s = lat.next(s)) {
    if (!(s.t1 > s.t0)) {
      if (!lat.fixed()) break;
      continue;
    }
    if (!(midpoint(s) < far) || midpoint(s) > reach) break;
    const Cell c = locate_sample(g, o, d, s);
    if (c.level >= 0 && bit_is_set(bits, g, c.level, c.index)) {
      t0.push_back(s.t0);
      t1.push_back(s.t1);
      if (mp.max_samples > 0 && int64_t(t0.size()) >= mp.max_samples) break;
    }
  }
  return int64_t(t0.size());
}

}  // namespace

int main() {
  // Cell lookup: half-open outer box, finest cascade, x-major index.
  {
    const GridSpec g = make_grid(2, 8, 8, 8);  // level 0 [-1, 1), level 1 [-2, 2)
    const float centre[3] = {0.f, 0.f, 0.f}, corner0[3] = {-1.f, -1.f, -1.f}, face0[3] = {1.f, 0.f, 0.f};
    const float corner1[3] = {-2.f, -2.f, -2.f}, outside[3] = {2.f, 0.f, 0.f}, nan_point[3] = {NAN, 0.f, 0.f};
    CHECK(locate(g, centre).level == 0 && locate(g, centre).index == (4 * 8 + 4) * 8 + 4);
    CHECK(locate(g, corner0).level == 0 && locate(g, corner0).index == 0);
    CHECK(locate(g, face0).level == 1 && locate(g, face0).index == (6 * 8 + 4) * 8 + 4);
    CHECK(locate(g, corner1).level == 1 && locate(g, corner1).index == 0);
    CHECK(locate(g, outside).level == -1);
    CHECK(locate(g, nan_point).level == -1);
    const GridSpec h = make_grid(1, 2, 3, 4);
    const float p[3] = {0.5f, 0.1f, -0.9f};  // cell (1, 1, 0)
    CHECK(locate(h, p).index == (1 * 3 + 1) * 4 + 0);
  }

  // Lattice: closed-form fixed step, contiguous samples; cone recurrence with clamps.
  {
    const Lattice fixed{0.25f, 0.1f, 0.f, 1e10f};
    const Sample s = fixed.at(7);
    CHECK(s.t0 == 0.25f + 7.f * 0.1f && fixed.next(s).t0 == s.t1);
    const Lattice cone{1.f, 0.001f, 0.01f, 0.015f};
    const Sample a = cone.first();
    CHECK(a.t0 == 1.f && a.t1 == 1.f + 0.01f);
    Sample b = a;
    for (int i = 0; i < 100; ++i) b = cone.next(b);
    CHECK_NEAR(b.t1 - b.t0, 0.015, 1e-6);
  }

  // The walk equals testing every sample, for random occupancy and rays, fixed step and cone, with and without cap.
  {
    std::mt19937 rng(1234);
    std::uniform_real_distribution<float> uni(-1.f, 1.f);
    int compared = 0, total_samples = 0;
    for (int levels = 1; levels <= 3; ++levels) {
      const GridSpec g = make_grid(levels, 16, 12, 8);
      std::vector<uint8_t> bits(size_t(levels * g.bytes_per_level), 0);
      for (int l = 0; l < levels; ++l) {
        for (int64_t c = 0; c < g.cells_per_level; ++c) {
          if (uni(rng) > 0.8f) set_bit(bits, g, l, c);  // 10% occupied: long empty stretches to skip
        }
      }
      for (int ray = 0; ray < 300; ++ray) {
        const float scale = float(1 << levels) * 1.5f;
        float o[3] = {uni(rng) * scale, uni(rng) * scale, uni(rng) * scale};
        float d[3] = {uni(rng) - o[0] / scale, uni(rng) - o[1] / scale, uni(rng) - o[2] / scale};
        if (ray % 10 == 0) d[ray % 3] = 0.f;  // axis-parallel components
        const float len = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
        for (float& v : d) v /= len;
        const MarchParams mp{0.01f, ray % 2 ? 0.01f : 0.f, 1e10f, ray % 7 == 0 ? 5 : 0};
        std::vector<float> a0, a1, b0, b1;
        const float near = 0.1f, far = ray % 5 == 0 ? 2.5f : 1e10f;
        const int64_t n = march_ray(g, mp, bits.data(), o, d, near, far, Collect{&a0, &a1});
        brute_force(g, mp, bits.data(), o, d, near, far, b0, b1);
        CHECK(n == int64_t(a0.size()));
        CHECK(a0 == b0 && a1 == b1);
        CHECK(march_ray(g, mp, bits.data(), o, d, near, far, Nothing()) == n);
        ++compared;
        total_samples += int(n);
      }
    }
    CHECK(compared == 900 && total_samples > 1000);
  }

  // Misses, near > far, zero direction: nothing; full grid: every sample in the box.
  {
    const GridSpec g = make_grid(1, 8, 8, 8);
    std::vector<uint8_t> full(size_t(g.bytes_per_level), 0xFF);
    const MarchParams mp{0.25f, 0.f, 1e10f, 0};
    const float o[3] = {0.f, 0.f, -2.f}, up[3] = {0.f, 0.f, 1.f}, away[3] = {0.f, 0.f, -1.f}, zero[3] = {0.f, 0.f, 0.f};
    const float miss[3] = {5.f, 0.f, -2.f};
    CHECK(march_ray(g, mp, full.data(), miss, up, 0.f, 1e10f, Nothing()) == 0);
    CHECK(march_ray(g, mp, full.data(), o, away, 0.f, 1e10f, Nothing()) == 0);
    CHECK(march_ray(g, mp, full.data(), o, up, 3.f, 2.f, Nothing()) == 0);
    CHECK(march_ray(g, mp, full.data(), o, zero, 0.f, 1e10f, Nothing()) == 0);
    // Midpoints at t = 1.125 + 0.25k: z = -0.875 + 0.25k in [-1, 1) for k = 0..7.
    std::vector<float> t0, t1;
    CHECK(march_ray(g, mp, full.data(), o, up, 1.0f, 1e10f, Collect{&t0, &t1}) == 8);
    CHECK(t0.front() == 1.0f && t1.back() == 3.0f);
    std::vector<uint8_t> empty(size_t(g.bytes_per_level), 0);
    CHECK(march_ray(g, mp, empty.data(), o, up, 0.f, 1e10f, Nothing()) == 0);
    // Non-finite near plane, origin or direction: nothing (these walks used to never end).
    const float o_inf[3] = {INFINITY, 0.f, -2.f}, o_nan[3] = {0.f, NAN, -2.f}, up_inf[3] = {0.f, 0.f, INFINITY};
    CHECK(march_ray(g, mp, full.data(), o, up, -INFINITY, 1e10f, Nothing()) == 0);
    CHECK(march_ray(g, mp, full.data(), o, up, INFINITY, INFINITY, Nothing()) == 0);
    CHECK(march_ray(g, mp, full.data(), o_inf, up, 0.f, 1e10f, Nothing()) == 0);
    CHECK(march_ray(g, mp, full.data(), o_inf, up, 0.f, INFINITY, Nothing()) == 0);
    CHECK(march_ray(g, mp, full.data(), o_nan, up, 0.f, 1e10f, Nothing()) == 0);
    CHECK(march_ray(g, mp, full.data(), o, up_inf, -2.f, 1e10f, Nothing()) == 0);
    const MarchParams cone{0.25f, 0.01f, 0.25f, 0};
    CHECK(march_ray(g, cone, full.data(), o, up, -INFINITY, 1e10f, Nothing()) == 0);
    CHECK(march_ray(g, cone, full.data(), o_inf, up, 0.f, 1e10f, Nothing()) == 0);
  }

  // EMA rule and bitfield bytes.
  {
    CHECK(ema_cell(0.5f, true, 0.1f, 0.9f) == mul_rn(0.5f, 0.9f));
    CHECK(ema_cell(0.5f, true, 0.7f, 0.9f) == 0.7f);
    CHECK(ema_cell(0.5f, false, 0.7f, 0.9f) == 0.5f);
    CHECK(ema_cell(-1.f, true, 0.7f, 0.9f) == -1.f);
    const float occs[10] = {0.f, 1.f, 0.f, 1.f, 0.f, 0.f, 0.f, 1.f, 1.f, 0.02f};
    CHECK(pack_byte(occs, 10, 0, 0.5f) == uint8_t(0x8A));
    CHECK(pack_byte(occs, 10, 1, 0.01f) == uint8_t(0x03));  // cells past the end are 0
    CHECK(pack_byte(occs, 10, 1, NAN) == 0);
  }
  TEST_MAIN_END();
}
