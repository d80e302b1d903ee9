// Tests of the fused MLP head's per-sample math (cuda/include/fastminerf/mlp_head.h) on the host: a hand-computed
// forward, and the input gradient and hidden gradient against central finite differences in double precision.
#include "fastminerf/mlp_head.h"

#include <vector>

#include "check.h"

using namespace fastminerf::mlphead;

namespace {

constexpr int P = 3, H = 4, O = 2;
const double kW1[H * P] = {0.5, -1.0, 0.25, 1.0, 0.5, -0.5, -0.75, 0.2, 0.1, 0.3, 0.3, 0.3};
const double kW2[O * H] = {1.0, -2.0, 0.5, 0.25, -0.5, 1.5, 2.0, -1.0};
const double kB2[O] = {0.1, -0.2};
const double kPre[H] = {0.2, -0.1, 0.05, -0.4};
const double kDy[O] = {0.7, -1.3};

double loss(const double* x, const double* pre) {
  double h[H], y[O];
  hidden(x, pre, kW1, P, H, h);
  output(h, kW2, kB2, H, O, y);
  return kDy[0] * y[0] + kDy[1] * y[1];
}

}  // namespace

int main() {
  const double x[P] = {0.3, -0.2, 0.9};
  double h[H], y[O];
  hidden(x, kPre, kW1, P, H, h);
  // a = W1 x + pre: 0.15+0.2+0.225+0.2 = 0.775; 0.3-0.1-0.45-0.1 = -0.35 -> 0; -0.225-0.04+0.09+0.05 = -0.125 -> 0;
  // 0.09-0.06+0.27-0.4 = -0.1 -> 0
  CHECK_NEAR(h[0], 0.775, 1e-12);
  CHECK(h[1] == 0.0 && h[2] == 0.0 && h[3] == 0.0);
  output(h, kW2, kB2, H, O, y);
  CHECK_NEAR(y[0], 0.1 + 0.775, 1e-12);
  CHECK_NEAR(y[1], -0.2 - 0.5 * 0.775, 1e-12);

  // A point where several units are active, for the gradient checks.
  const double x2[P] = {0.8, -0.6, 0.3};
  double h2[H], dh[H], dx[P];
  hidden(x2, kPre, kW1, P, H, h2);
  backward(kDy, h2, kW1, kW2, P, H, O, dh, dx);
  const double eps = 1e-6;
  for (int p = 0; p < P; ++p) {
    double xp[P], xm[P];
    for (int k = 0; k < P; ++k) xp[k] = xm[k] = x2[k];
    xp[p] += eps;
    xm[p] -= eps;
    CHECK_NEAR(dx[p], (loss(xp, kPre) - loss(xm, kPre)) / (2 * eps), 1e-8);
  }
  for (int j = 0; j < H; ++j) {  // dL/dpre = dh
    double pp[H], pm[H];
    for (int k = 0; k < H; ++k) pp[k] = pm[k] = kPre[k];
    pp[j] += eps;
    pm[j] -= eps;
    CHECK_NEAR(dh[j], (loss(x2, pp) - loss(x2, pm)) / (2 * eps), 1e-8);
  }
  int active = 0;
  for (int j = 0; j < H; ++j) active += h2[j] > 0.0;
  CHECK(active >= 2 && active < H);  // the check covers both sides of the ReLU
  // Without dx only dh is written.
  double dh2[H];
  backward(kDy, h2, kW1, kW2, P, H, O, dh2, static_cast<double*>(nullptr));
  for (int j = 0; j < H; ++j) CHECK(dh2[j] == dh[j]);
  TEST_MAIN_END();
}
