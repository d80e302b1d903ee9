// The fused MLP head: one hidden ReLU layer whose pre-activation adds a per-ray row, and a linear output.
//
//   a = W1 x + pre[ray]          x (P,) per sample, pre (H,) per ray (the conditioning's part of the first layer
//   h = relu(a)                  plus its bias, computed once per ray outside), W1 (H, P)
//   y = W2 h + b2                W2 (O, H), b2 (O,)
//
// Backward, given dy (O,):  dh = (h > 0) * W2^T dy,  dx = W1^T dh,  dpre[ray] += dh,  dW1 += dh x^T,  dW2 += dy h^T,
// db2 += dy.
//
// The per-sample functions below are the whole math of the op, written once for the CUDA kernels (one thread a
// sample) and for the CPU, whose fast path is the same sums blocked over 32 samples at a time
// (mlp_head_cpu.cpp) and whose per-sample reference loop is this code.
#pragma once

#include "fastminerf/common.h"

namespace fastminerf {
namespace mlphead {

constexpr int kMaxHidden = 128;  // H: the CUDA kernels keep one sample's hidden row in registers / local memory

// Written as torch's threshold is (`v <= 0 ? 0 : v`), so that a NaN stays NaN as in torch.relu, where `v > 0 ? v : 0`
// gave 0 and hid it from the output while its gradients still carried it.
template <typename T>
FMN_HD T relu(T v) { return v <= T(0) ? T(0) : v; }

// dh = W2^T dy masked by h > 0 (relu'(a) taken as 0 at a = 0, as torch does; a NaN h passes the gradient on, as
// torch's threshold_backward does).
template <typename T>
FMN_HD T masked(T grad, T h) { return h <= T(0) ? T(0) : grad; }

// h (H,) = relu(W1 x + pre) for one sample; w1 row-major (H, P).
template <typename T>
FMN_HD void hidden(const T* x, const T* pre, const T* w1, int P, int H, T* h) {
  for (int j = 0; j < H; ++j) {
    T a = pre[j];
    for (int p = 0; p < P; ++p) a += w1[j * P + p] * x[p];
    h[j] = relu(a);
  }
}

// y (O,) = W2 h + b2; w2 row-major (O, H).
template <typename T>
FMN_HD void output(const T* h, const T* w2, const T* b2, int H, int O, T* y) {
  for (int o = 0; o < O; ++o) {
    T acc = b2[o];
    for (int j = 0; j < H; ++j) acc += w2[o * H + j] * h[j];
    y[o] = acc;
  }
}

// dh (H,) = (h > 0) * W2^T dy and, when dx is not null, dx (P,) = W1^T dh.
template <typename T>
FMN_HD void backward(const T* dy, const T* h, const T* w1, const T* w2, int P, int H, int O, T* dh, T* dx) {
  for (int j = 0; j < H; ++j) {
    T acc = T(0);
    for (int o = 0; o < O; ++o) acc += w2[o * H + j] * dy[o];
    dh[j] = masked(acc, h[j]);
  }
  if (dx == nullptr) return;
  for (int p = 0; p < P; ++p) {
    T acc = T(0);
    for (int j = 0; j < H; ++j) acc += w1[j * P + p] * dh[j];
    dx[p] = acc;
  }
}

}  // namespace mlphead
}  // namespace fastminerf
