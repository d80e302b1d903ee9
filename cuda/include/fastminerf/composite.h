// Volume compositing of one ray's packed samples, shared by the CPU loop (composite_cpu.cpp) and the CUDA
// kernels (composite_cuda.cu): the per-ray forward and backward are written once here.
//
// A ray owns samples [begin, end) of the packed arrays, sorted by t. For sample i:
//   delta_i = t_end_i - t_start_i,   sd_i = sigma_i delta_i,   alpha_i = 1 - exp(-sd_i)   (see alpha_from_optical_depth),
//   T_i = exp(-sum_{j<i} sd_j)   (the running sum tau is accumulated left to right),   w_i = T_i alpha_i.
// Early termination: sample i is active iff T_i >= threshold; the first inactive sample and all later ones get
// weight 0 and no gradient (threshold 0 keeps every sample). K = number of active samples of the ray.
// Outputs: C = sum_i w_i c_i, O = sum_i w_i, D = sum_i w_i m_i with m_i = (t_start_i + t_end_i) / 2 (not
// normalised by O), and T_K, the transmittance left after the last active sample (kept for the backward).
//
// Backward. With g_i = gC.c_i + gO + gD m_i + gW_i (gW: gradient of the weights output) and L = sum_{i<K} w_i g_i:
//   dL/dc_i     = w_i gC,
//   dL/dsigma_i = delta_i (T_{i+1} g_i - S_i),   S_i = sum_{i<j<K} w_j g_j,   T_{i+1} = T_i exp(-sd_i).
// The opacity term is split off exactly: for g_j = gO on every sample, T_{i+1} g_i - S_i = gO (T_{i+1} -
// sum_{i<j<K} w_j) = gO T_K, so its share of dL/dsigma_i is delta_i gO T_K, computed as such rather than as a
// difference of two numbers near T_{i+1} (whose absolute error eps T_{i+1} is a 100% relative error on an opaque
// ray, where T_K is itself ~ eps). Only h_i = g_i - gO goes through the suffix sums below.
// The backward walks the active samples from the last to the first, accumulating S_i and rebuilding
// T_{i+1} = T_K + sum_{i<j<K} w_j from the saved weights: both are sums of the ray's *tail* only, so their
// rounding error is relative to the tail's size. The alternative, S_i = total - prefix_i (instant-ngp), takes
// the difference of two numbers of the size of the whole ray's sum, which loses all relative precision exactly
// where the tail is small (behind a surface), and tau_{i} = tau_{i+1} - sd_i walked backwards cancels the same way.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastminerf/common.h"

namespace fastminerf {

FMN_HD float fmn_expm1(float x) { return expm1f(x); }
FMN_HD double fmn_expm1(double x) { return ::expm1(x); }

namespace composite {

// alpha = 1 - exp(-sd) for an optical depth sd >= 0, accurate also for small sd (where 1 - exp(-sd) cancels).
// double: expm1. float: on [0, 0.5) the Taylor series of -expm1(-sd) to the sd^8 term (truncation below
// 0.5^9 / 9! / alpha(0.5) = 1.4e-8 relative), from 0.5 on 1 - expf(-sd), which cannot cancel (expf(-sd) <= 0.61).
// Within 2 ulp of the exact value (cuda/tests/test_composite.cpp sweeps it) and about 5x cheaper than expm1f,
// which was two thirds of the forward's time on the CPU.
FMN_HD double alpha_from_optical_depth(double sd) { return -fmn_expm1(-sd); }
FMN_HD float alpha_from_optical_depth(float sd) {
  if (sd < 0.5f) {
    const float x = -sd;
    float p = 1.0f / 40320.0f;
    p = p * x + 1.0f / 5040.0f;
    p = p * x + 1.0f / 720.0f;
    p = p * x + 1.0f / 120.0f;
    p = p * x + 1.0f / 24.0f;
    p = p * x + 1.0f / 6.0f;
    p = p * x + 0.5f;
    p = p * x + 1.0f;
    return -(p * x);
  }
  return 1.0f - fmn_exp(-sd);
}

// Per-ray results of the forward pass.
template <typename T>
struct RayOutput {
  T color[3];
  T opacity;
  T depth;
  T trans_end;      // T_K: transmittance after the last active sample (1 for an empty ray)
  int64_t n_active;  // K: samples of the ray that received a weight (the rest were terminated)
};

// Forward for the ray owning samples [begin, end). Writes weights[begin + k] for the K active samples only:
// the caller zero-fills `weights` so that terminated samples read 0.
//   sigmas (S,), rgbs (S, 3), t_starts (S,), t_ends (S,) -> weights (S,)
template <typename T>
FMN_HD RayOutput<T> forward_ray(int64_t begin, int64_t end, const T* sigmas, const T* rgbs, const T* t_starts,
                                const T* t_ends, T threshold, T* weights) {
  RayOutput<T> out;
  out.color[0] = out.color[1] = out.color[2] = T(0);
  out.opacity = T(0);
  out.depth = T(0);
  T tau = T(0);
  T trans = T(1);
  int64_t i = begin;
  for (; i < end; ++i) {
    if (trans < threshold) break;
    const T t0 = t_starts[i];
    const T t1 = t_ends[i];
    const T sd = sigmas[i] * (t1 - t0);
    const T w = trans * alpha_from_optical_depth(sd);
    weights[i] = w;
    const T* c = rgbs + 3 * i;
    out.color[0] += w * c[0];
    out.color[1] += w * c[1];
    out.color[2] += w * c[2];
    out.opacity += w;
    out.depth += w * ((t0 + t1) * T(0.5));
    tau += sd;
    trans = fmn_exp(-tau);
  }
  out.trans_end = trans;
  out.n_active = i - begin;
  return out;
}

// Backward for the ray owning samples [begin, begin + n_active) (its active samples). Any of grad_color (3),
// grad_opacity, grad_depth (scalars) and grad_weights (S,) may be null (a zero gradient). Writes
// grad_sigmas[i] and grad_rgbs[3i..3i+2] of the active samples when those pointers are not null; the caller
// zero-fills them so that terminated samples read 0.
template <typename T>
FMN_HD void backward_ray(int64_t begin, int64_t n_active, T trans_end, const T* grad_color, const T* grad_opacity,
                         const T* grad_depth, const T* grad_weights, const T* rgbs, const T* t_starts,
                         const T* t_ends, const T* weights, T* grad_sigmas, T* grad_rgbs) {
  // dL/dsigma needs only delta, the weights and the transmittance (rebuilt from the weights): not sigma itself.
  const T gC0 = grad_color ? grad_color[0] : T(0);
  const T gC1 = grad_color ? grad_color[1] : T(0);
  const T gC2 = grad_color ? grad_color[2] : T(0);
  const T gO = grad_opacity ? *grad_opacity : T(0);
  const T gD = grad_depth ? *grad_depth : T(0);
  const T opacity_term = gO * trans_end;  // the gO part of T_{i+1} g_i - S_i, the same for every active sample
  T suffix = T(0);           // S_i without the gO part: sum_{i<j<K} w_j h_j, h = g - gO
  T trans_next = trans_end;  // T_{i+1} = T_K + sum_{i<j<K} w_j
  for (int64_t i = begin + n_active - 1; i >= begin; --i) {
    const T w = weights[i];
    const T t0 = t_starts[i];
    const T t1 = t_ends[i];
    const T* c = rgbs + 3 * i;
    T h = gD * ((t0 + t1) * T(0.5)) + gC0 * c[0] + gC1 * c[1] + gC2 * c[2];
    if (grad_weights) h += grad_weights[i];
    if (grad_sigmas) grad_sigmas[i] = (t1 - t0) * (opacity_term + (trans_next * h - suffix));
    if (grad_rgbs) {
      grad_rgbs[3 * i + 0] = w * gC0;
      grad_rgbs[3 * i + 1] = w * gC1;
      grad_rgbs[3 * i + 2] = w * gC2;
    }
    suffix += w * h;
    trans_next += w;
  }
}

}  // namespace composite
}  // namespace fastminerf
