// Tests of the shared hash-grid math (cuda/include/fastminerf/hash_grid.h) on the host.
#include "fastminerf/hash_grid.h"

#include "check.h"

using namespace fastminerf::hashgrid;

int main() {
  // Coherent prime hash: x * 1 ^ y * 2654435761 ^ z * 805459861 in uint32 arithmetic.
  CHECK(coherent_prime_hash(0, 0, 0) == 0u);
  CHECK(coherent_prime_hash(1, 0, 0) == 1u);
  CHECK(coherent_prime_hash(0, 1, 0) == 2654435761u);
  CHECK(coherent_prime_hash(0, 0, 1) == 805459861u);
  CHECK(coherent_prime_hash(3, 2, 1) == (3u ^ (2u * 2654435761u) ^ 805459861u));

  // Dense indexing when R^3 fits, hash otherwise; always modulo the level size.
  CHECK(grid_index(4096, 16, 1, 2, 3) == 1u + 2u * 16u + 3u * 256u);
  CHECK(grid_index(4096, 16, 16, 0, 0) == 16u);  // a corner one past the last vertex aliases, as in tiny-cuda-nn
  CHECK(grid_index(1u << 10, 16, 1, 2, 3) == (coherent_prime_hash(1, 2, 3) % (1u << 10)));
  CHECK(grid_index(1u << 19, 2048, 7, 9, 11) == (coherent_prime_hash(7, 9, 11) % (1u << 19)));

  // A salted level always hashes (even where the level would be dense), with the salt as a fourth coordinate;
  // salt 0 hashes like the plain coherent hash.
  CHECK(grid_index(4096, 16, 1, 2, 3, 0u, true) == (coherent_prime_hash(1, 2, 3) % 4096u));
  CHECK(grid_index(4096, 16, 1, 2, 3, 5u, true) == ((coherent_prime_hash(1, 2, 3) ^ (5u * 3674653429u)) % 4096u));
  CHECK(grid_index(4096, 16, 1, 2, 3, 5u, false) == 1u + 2u * 16u + 3u * 256u);

  // Trilinear weights sum to one and interpolate a linear function exactly.
  const double x[3] = {0.3141, 0.2718, 0.5772};
  uint32_t rows[8];
  double w[8], frac[3];
  level_corners(x, 15.0, 16u, 4096u, rows, w, frac);
  double sum = 0.0;
  for (double v : w) sum += v;
  CHECK_NEAR(sum, 1.0, 1e-12);
  CHECK_NEAR(frac[0], 15.0 * 0.3141 + 0.5 - std::floor(15.0 * 0.3141 + 0.5), 1e-12);

  // Weight derivatives against central differences of the weights with respect to frac.
  for (int c = 0; c < 8; ++c) {
    for (int d = 0; d < 3; ++d) {
      const double h = 1e-6;
      double fp[3] = {frac[0], frac[1], frac[2]}, fm[3] = {frac[0], frac[1], frac[2]};
      fp[d] += h;
      fm[d] -= h;
      auto weight = [&](const double* f) {
        double v = 1.0;
        for (int e = 0; e < 3; ++e) v *= ((c >> e) & 1) ? f[e] : 1.0 - f[e];
        return v;
      };
      CHECK_NEAR(weight_derivative(c, d, frac), (weight(fp) - weight(fm)) / (2 * h), 1e-8);
    }
  }

  // Float grid position equals a single rounding of s * x + 0.5 (what fmaf gives on the GPU).
  const float s = 22.0f, xf = 0.123456789f;
  CHECK(grid_position(s, xf) == static_cast<float>(static_cast<double>(s) * xf + 0.5));
  // Negative cells wrap through uint32 like tiny-cuda-nn's (uint32_t)(int)floorf(p).
  const double xn[3] = {-0.5, 0.25, 0.25};
  level_corners(xn, 15.0, 16u, 1u << 10, rows, w, frac);
  CHECK(rows[0] == coherent_prime_hash(static_cast<uint32_t>(-7), 4u, 4u) % (1u << 10));
  TEST_MAIN_END();
}
