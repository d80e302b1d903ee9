// Tests of the shared compositing math (cuda/include/fastminerf/composite.h) on the host: hand-computed
// forward values, early termination at the threshold, empty rays, and the backward against central finite
// differences of the forward in double precision.
#include "fastminerf/composite.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "check.h"

using namespace fastminerf::composite;

namespace {

struct Ray {
  std::vector<double> sigmas, rgbs, t0, t1;
  int64_t size() const { return static_cast<int64_t>(sigmas.size()); }
};

Ray make_ray() {
  Ray r;
  r.sigmas = {0.4, 0.0, 2.5, 0.8, 7.0};
  r.t0 = {0.1, 0.3, 0.35, 0.6, 0.7};
  r.t1 = {0.3, 0.35, 0.6, 0.7, 1.1};
  r.rgbs = {0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.5, 0.5, 0.5, 0.0, 1.0, 0.25, 0.6, 0.3, 0.1};
  return r;
}

// Scalar loss L = gC.C + gO O + gD D + sum gW_i w_i for the gradient checks.
double loss(const Ray& r, double threshold, const double gc[3], double go, double gd, const std::vector<double>& gw) {
  std::vector<double> w(r.sigmas.size(), 0.0);
  const auto out = forward_ray<double>(0, r.size(), r.sigmas.data(), r.rgbs.data(), r.t0.data(), r.t1.data(),
                                       threshold, w.data());
  double l = gc[0] * out.color[0] + gc[1] * out.color[1] + gc[2] * out.color[2] + go * out.opacity + gd * out.depth;
  for (size_t i = 0; i < w.size(); ++i) l += gw[i] * w[i];
  return l;
}

}  // namespace

int main() {
  // alpha = -expm1(-sd) stays exact for tiny optical depths, where 1 - exp(-sd) rounds to 0 in float.
  CHECK_NEAR(alpha_from_optical_depth(1e-10f) / 1e-10f, 1.0, 1e-6);
  CHECK(alpha_from_optical_depth(0.0) == 0.0);
  CHECK(alpha_from_optical_depth(std::numeric_limits<double>::infinity()) == 1.0);
  CHECK(alpha_from_optical_depth(std::numeric_limits<float>::infinity()) == 1.0f);
  CHECK(alpha_from_optical_depth(0.0f) == 0.0f);
  // The float version (a polynomial below 0.5, 1 - expf above) stays within 2 ulp (1.2e-7 relative) of the exact
  // value, swept densely over [0, 1) and geometrically over 2^-40 .. 2^40.
  double worst = 0.0;
  for (int i = 0; i < 200000; ++i) {
    const float sd = i < 100000 ? static_cast<float>(i) * 1e-5f : std::ldexp(1.0f, -40 + (i - 100000) / 1250);
    const double exact = -std::expm1(-static_cast<double>(sd));
    if (exact > 0.0) worst = std::fmax(worst, std::fabs(alpha_from_optical_depth(sd) - exact) / exact);
  }
  CHECK(worst <= 1.2e-7);

  // Forward of one ray against a direct evaluation of the formulas.
  const Ray r = make_ray();
  std::vector<double> w(r.sigmas.size(), -1.0);
  auto out = forward_ray<double>(0, r.size(), r.sigmas.data(), r.rgbs.data(), r.t0.data(), r.t1.data(), 0.0, w.data());
  double tau = 0.0, color[3] = {0, 0, 0}, opacity = 0.0, depth = 0.0;
  for (int64_t i = 0; i < r.size(); ++i) {
    const double sd = r.sigmas[i] * (r.t1[i] - r.t0[i]);
    const double wi = std::exp(-tau) * (1.0 - std::exp(-sd));
    CHECK_NEAR(w[i], wi, 1e-15);
    for (int c = 0; c < 3; ++c) color[c] += wi * r.rgbs[3 * i + c];
    opacity += wi;
    depth += wi * 0.5 * (r.t0[i] + r.t1[i]);
    tau += sd;
  }
  for (int c = 0; c < 3; ++c) CHECK_NEAR(out.color[c], color[c], 1e-14);
  CHECK_NEAR(out.opacity, opacity, 1e-14);
  CHECK_NEAR(out.depth, depth, 1e-14);
  CHECK_NEAR(out.trans_end, std::exp(-tau), 1e-15);
  CHECK_NEAR(out.opacity + out.trans_end, 1.0, 1e-14);  // weights and what is left sum to one
  CHECK(out.n_active == r.size());

  // Empty ray: nothing accumulated, all light passes.
  out = forward_ray<double>(2, 2, r.sigmas.data(), r.rgbs.data(), r.t0.data(), r.t1.data(), 1e-4, w.data());
  CHECK(out.n_active == 0 && out.opacity == 0.0 && out.depth == 0.0 && out.trans_end == 1.0);

  // Early termination: T_0 = 1, T_1 = exp(-0.08), T_2 = T_1, T_3 = exp(-0.705) ~ 0.494. A threshold of 0.5 keeps
  // samples 0..2 and stops before sample 3; untouched weights keep the caller's fill value.
  std::fill(w.begin(), w.end(), 0.0);
  out = forward_ray<double>(0, r.size(), r.sigmas.data(), r.rgbs.data(), r.t0.data(), r.t1.data(), 0.5, w.data());
  CHECK(out.n_active == 3);
  CHECK(w[3] == 0.0 && w[4] == 0.0 && w[2] > 0.0);
  CHECK_NEAR(out.trans_end, std::exp(-(0.4 * 0.2 + 2.5 * 0.25)), 1e-15);
  // The comparison is T_i < threshold: a transmittance exactly at the threshold is still active.
  const double zero_sigma[2] = {0.0, 0.0}, zero_rgb[6] = {1, 1, 1, 1, 1, 1}, ts[2] = {0.0, 1.0}, te[2] = {1.0, 2.0};
  double w2[2] = {-1.0, -1.0};
  out = forward_ray<double>(0, 2, zero_sigma, zero_rgb, ts, te, 1.0, w2);
  CHECK(out.n_active == 2 && w2[0] == 0.0 && w2[1] == 0.0);
  w2[0] = w2[1] = -1.0;
  out = forward_ray<double>(0, 2, zero_sigma, zero_rgb, ts, te, std::nextafter(1.0, 2.0), w2);
  CHECK(out.n_active == 0 && w2[0] == -1.0 && out.trans_end == 1.0);

  // Backward against central differences, without termination and with it (threshold far from every T_i).
  const double gc[3] = {0.3, -1.2, 0.7}, go = 0.45, gd = -0.8;
  const std::vector<double> gw = {0.2, -0.4, 1.1, 0.6, -0.3};
  for (double threshold : {0.0, 0.5}) {
    std::vector<double> wt(r.sigmas.size(), 0.0), gs(r.sigmas.size(), 0.0), grgb(r.rgbs.size(), 0.0);
    out = forward_ray<double>(0, r.size(), r.sigmas.data(), r.rgbs.data(), r.t0.data(), r.t1.data(), threshold,
                              wt.data());
    backward_ray<double>(0, out.n_active, out.trans_end, gc, &go, &gd, gw.data(), r.rgbs.data(), r.t0.data(),
                         r.t1.data(), wt.data(), gs.data(), grgb.data());
    const double h = 1e-6;
    for (int64_t i = 0; i < r.size(); ++i) {
      Ray p = r, m = r;
      p.sigmas[i] += h;
      m.sigmas[i] -= h;
      const double fd = (loss(p, threshold, gc, go, gd, gw) - loss(m, threshold, gc, go, gd, gw)) / (2 * h);
      CHECK_NEAR(gs[i], fd, 1e-8);
      for (int c = 0; c < 3; ++c) {
        Ray pc = r, mc = r;
        pc.rgbs[3 * i + c] += h;
        mc.rgbs[3 * i + c] -= h;
        const double fdc = (loss(pc, threshold, gc, go, gd, gw) - loss(mc, threshold, gc, go, gd, gw)) / (2 * h);
        CHECK_NEAR(grgb[3 * i + c], fdc, 1e-8);
      }
    }
    if (threshold > 0) CHECK(gs[3] == 0.0 && gs[4] == 0.0 && grgb[9] == 0.0);
  }

  // Absent output gradients act as zeros.
  std::vector<double> gs(r.sigmas.size(), 0.0);
  out = forward_ray<double>(0, r.size(), r.sigmas.data(), r.rgbs.data(), r.t0.data(), r.t1.data(), 0.0, w.data());
  backward_ray<double>(0, out.n_active, out.trans_end, nullptr, nullptr, nullptr, nullptr, r.rgbs.data(), r.t0.data(),
                       r.t1.data(), w.data(), gs.data(), nullptr);
  for (double g : gs) CHECK(g == 0.0);
  TEST_MAIN_END();
}
